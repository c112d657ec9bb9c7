"""Two views: one saves a signup and enqueues its welcome email in the same transaction, one waits
for a job's outcome."""

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from shoal.contrib import django as shoal
from shop.models import Signup


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    """ATOMIC_REQUESTS: the signup row and the job commit together, or neither does (a duplicate
    email below, or any error after the enqueue, rolls both back)."""
    email = request.POST["email"]
    job_id = shoal.enqueue("emails", "shop.send_welcome", {"email": email}, priority=5)
    try:
        with transaction.atomic():  # a savepoint: the duplicate's error must not abort the whole request
            record = Signup.objects.create(email=email)
    except IntegrityError:
        transaction.set_rollback(True)  # drop the job enqueued above with the rest of the request
        return JsonResponse({"error": f"{email} has already signed up"}, status=409)
    return JsonResponse({"signup": record.id, "job": job_id}, status=201)


@require_GET
@transaction.non_atomic_requests  # waiting must not hold a transaction open
def job_result(request: HttpRequest, job_id: int) -> JsonResponse:
    """Block until the job is final (at most ?timeout= seconds): 200 with its outcome, or 202."""
    try:
        result = shoal.wait_for(job_id, timeout=float(request.GET.get("timeout", "10")))
    except TimeoutError:
        return JsonResponse({"job": job_id, "state": "pending"}, status=202)
    # pruned: it succeeded and retention (the queue's keep_succeeded) has already deleted its row.
    return JsonResponse({"job": job_id, "state": result.state, "attempts": result.attempts, "error": result.error,
                         "pruned": result.pruned})
