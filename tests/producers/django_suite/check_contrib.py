"""shoal.contrib.django on a real Django project (examples/django_app) and a real PostgreSQL: jobs go
through Django's connection and live or die with its transaction."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test import Client
from shop.models import Signup

from shoal.contrib import django as shoal
from shoal.errors import UnknownQueueError, ValidationError
from shoal.jobs import NewJob

pytestmark = pytest.mark.django_db(transaction=True)  # real commits: the observer must see them
BIG = 1_000


def jobs(observer: psycopg.Connection[Any]) -> int:
    row = observer.execute("SELECT count(*) FROM shoal.jobs").fetchone()
    return int(row[0]) if row else -1


@pytest.mark.parametrize("size", [1, BIG], ids=["insert", "copy"])
def test_jobs_commit_with_the_atomic_block(observer: psycopg.Connection[Any], size: int) -> None:
    with transaction.atomic():
        Signup.objects.create(email="a@example.com")
        ids = shoal.enqueue_many([NewJob("emails", "shop.send_welcome", {"n": n}) for n in range(size)])
        assert jobs(observer) == 0
    assert jobs(observer) == size == len(ids)


@pytest.mark.parametrize("size", [1, BIG], ids=["insert", "copy"])
def test_jobs_roll_back_with_the_atomic_block(observer: psycopg.Connection[Any], size: int) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        shoal.enqueue_many([NewJob("emails", "shop.send_welcome", {"n": n}) for n in range(size)])
        Signup.objects.create(email="b@example.com")
        raise RuntimeError("the view failed")
    assert jobs(observer) == 0 and not Signup.objects.exists()


def test_outside_a_transaction_jobs_commit_at_once(observer: psycopg.Connection[Any]) -> None:
    assert connection.get_autocommit()
    shoal.enqueue("emails", "shop.send_welcome", {"n": 1})
    shoal.enqueue_many([NewJob("emails", "shop.send_welcome", {"n": n}) for n in range(BIG)])
    assert jobs(observer) == BIG + 1
    assert connection.connection is not None and connection.connection.info.transaction_status == 0  # IDLE


def test_a_refused_job_leaves_the_transaction_usable(observer: psycopg.Connection[Any]) -> None:
    with transaction.atomic():
        with pytest.raises(ValidationError) as err:
            shoal.enqueue_many([NewJob("emails", "t")] * (BIG - 1) + [NewJob("emails", "t", priority=True)])
        assert err.value.field == f"jobs[{BIG - 1}].priority"
        Signup.objects.create(email="c@example.com")  # still usable
        shoal.enqueue("emails", "t")
    assert jobs(observer) == 1 and Signup.objects.count() == 1
    with pytest.raises(UnknownQueueError):
        shoal.enqueue("ghost", "t")


def test_the_view_commits_or_rolls_back_the_job_with_its_row(observer: psycopg.Connection[Any]) -> None:
    web = Client()
    created = web.post("/signups", {"email": "d@example.com"})
    assert created.status_code == 201
    job = created.json()["job"]
    duplicate = web.post("/signups", {"email": "d@example.com"})
    assert duplicate.status_code == 409
    rows = observer.execute("SELECT id, queue, task, payload, priority FROM shoal.jobs").fetchall()
    assert rows == [(job, "emails", "shop.send_welcome", {"email": "d@example.com"}, 5)]
    pending = web.get(f"/jobs/{job}?timeout=0.2")  # no worker here: still pending
    assert pending.status_code == 202 and pending.json()["state"] == "pending"


def test_the_database_alias_comes_from_the_setting(settings: Any) -> None:
    assert shoal.database_alias() == "default"
    settings.SHOAL = {"DATABASE": "elsewhere"}
    with pytest.raises(ImproperlyConfigured, match="elsewhere"):
        shoal.enqueue("emails", "t")
    errors = checks.run_checks()
    assert [e.id for e in errors] == ["shoal.E001"]
    settings.SHOAL = {"DATABASE": "default"}
    assert checks.run_checks() == []
