"""Reconciling one Queue resource: Postgres queue, worker Deployment, status.

Called on create/update/resume and on every resync (the timer), so it is idempotent and
cheap when nothing changed: it reads the Deployment and writes only a drift patch; it
declares the queue in Postgres with the whole spec (``put_queue`` makes it exactly that).

The spec is parsed once into a `QueueSpec` (`shoal.operator.queue_spec`); an invalid one is
reported on the SpecValid condition (and as an Event) with the field and the fix.

Replicas have one writer: this reconciler creates a missing Deployment at the Queue's floor
and never touches ``spec.replicas`` after that; the Queue's autoscaler
(`shoal.operator.scaling`, the shared loop of `shoal.scaler.loop`) changes them, changed
bounds included, and posts the Scaled Events. Status is split the same way, between writers
that never write the same key: this reconciler owns ``queueName``, ``deployment``,
``conditions`` and ``observedGeneration``; the autoscaler owns the counts and replicas
(``pending``, which holds the ready jobs, ``running``, ``replicas``, ``desiredReplicas``,
``lastScaleTime``, ``lastScaleReason``) and their gauges. Both send merge patches of their
own keys only, so neither clobbers the other.

The Deployment is converged whenever the spec is valid, even if the operator cannot reach
the database right now: its content does not depend on the database (workers get the URL
from the Secret themselves), and a network problem between the operator and Postgres must
not block a worker rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import ValidationError
from shoal.operator import kube, metrics
from shoal.operator.conditions import (
    DATABASE_REACHABLE,
    DEPLOYMENT_AVAILABLE,
    QUEUE_DECLARED,
    SPEC_VALID,
    Condition,
    to_status,
    transitions,
    with_ready,
)
from shoal.operator.databases import Databases
from shoal.operator.deployment import Owner, build_deployment, drift_patch, template_hash
from shoal.operator.naming import TEMPLATE_HASH_ANNOTATION, deployment_name
from shoal.operator.problems import Problem
from shoal.operator.queue_config import queue_config
from shoal.operator.queue_spec import QueueSpec, parse_queue_spec, scaling_policy
from shoal.operator.sources import database_pool, database_url
from shoal.queues import QueueConfig, get_queue, put_queue

Emit = Callable[[str, str, str], None]  # (type, reason, message)


@dataclass
class QueueResult:
    status: dict[str, Any]
    retry: Problem | None = None  # a transient problem: retry with backoff
    events: list[tuple[str, str, str]] = field(default_factory=list)


def availability(live: Mapping[str, Any] | None) -> Condition:
    """DeploymentAvailable from the Deployment's own status (its controller's view)."""
    if live is None:
        return Condition.unknown(DEPLOYMENT_AVAILABLE, "DeploymentMissing", "the worker Deployment does not exist yet")
    name = live.get("metadata", {}).get("name", "")
    wanted = int((live.get("spec") or {}).get("replicas") or 0)
    status = live.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    if wanted == 0:
        return Condition.true(DEPLOYMENT_AVAILABLE, "ScaledToZero", "no workers are wanted right now")
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Available"), None)
    if cond is None:
        return Condition.unknown(DEPLOYMENT_AVAILABLE, "Progressing",
                                 f"waiting for Deployment {name} to report its pods")
    if cond.get("status") == "True":
        return Condition.true(DEPLOYMENT_AVAILABLE, "WorkersAvailable", f"{available}/{wanted} worker pods available")
    return Condition.false(
        DEPLOYMENT_AVAILABLE, "WorkersUnavailable",
        f"{available}/{wanted} worker pods available; check `kubectl describe deployment {name}` and its pods' "
        "events (spec.worker.image, spec.worker.tasks, spec.databaseSecretRef)")


def _config_changes(before: QueueConfig | None, after: QueueConfig) -> str | None:
    if before is None:
        return f"declared queue {after.name!r} in Postgres"
    changed = [f"{k}={getattr(after, k)}" for k in vars(after) if getattr(before, k) != getattr(after, k)]
    return f"updated queue {after.name!r}: {', '.join(changed)}" if changed else None


async def converge_deployment(owner: Owner, spec: QueueSpec, emit: Emit) -> dict[str, Any]:
    """Create the worker Deployment (at the Queue's floor), or patch it back to what the spec
    says, replicas excepted (the autoscaler owns them). Returns the live object."""
    name = deployment_name(owner.name)
    live = await kube.read_deployment(owner.namespace, name)
    if live is None:
        replicas = scaling_policy(spec).effective_min
        try:
            live = await kube.create_deployment(owner.namespace, build_deployment(owner, spec, replicas))
            emit("Normal", "DeploymentCreated", f"created Deployment {name} with {replicas} replica(s)")
            return live
        except kube.AlreadyExists:  # another replica (or handler) was first: converge that one
            live = await kube.read_deployment(owner.namespace, name)
            if live is None:
                raise Problem(DEPLOYMENT_AVAILABLE, "DeploymentRace",
                              f"Deployment {name} was created and deleted concurrently; retrying") from None
    controller = next((r for r in live.get("metadata", {}).get("ownerReferences") or [] if r.get("controller")), None)
    if controller is not None and (controller.get("kind"), controller.get("name")) != (owner.kind, owner.name):
        raise Problem(DEPLOYMENT_AVAILABLE, "DeploymentConflict",
                      f"metadata.name: Deployment {name} already exists and is controlled by "
                      f"{controller.get('kind')} {controller.get('name')}; delete it or rename this Queue")
    desired = build_deployment(owner, spec, int((live.get("spec") or {}).get("replicas") or 0))
    patch = drift_patch(live, desired)
    if patch is None:
        return live
    before_hash = (live.get("metadata", {}).get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)
    live = await kube.patch_deployment(owner.namespace, name, patch)
    if before_hash != template_hash(desired["spec"]["template"]):
        emit("Normal", "DeploymentUpdated", f"updated Deployment {name} to the Queue's spec")
    else:
        emit("Normal", "DriftCorrected", f"restored Deployment {name}: it had been changed outside the Queue")
    return live


async def reconcile_queue(*, name: str, namespace: str, uid: str, spec: Mapping[str, Any],
                          status: Mapping[str, Any], generation: int | None, databases: Databases,
                          now: str) -> QueueResult:
    """One pass over a Queue. Never raises for a user's mistake: it reports it as conditions."""
    events: list[tuple[str, str, str]] = []

    def emit(kind: str, reason: str, message: str) -> None:
        events.append((kind, reason, message))

    previous = status.get("conditions") or []
    result_status: dict[str, Any] = {}
    retry: Problem | None = None
    causes: list[Condition] = []
    try:
        parsed = parse_queue_spec(namespace, name, spec)
        config = queue_config(parsed)
        owner = Owner(name=name, namespace=namespace, uid=uid)
        build_deployment(owner, parsed, 0)  # validates what the Deployment needs (metadata.name)
    except ValidationError as exc:
        causes = [Condition.false(SPEC_VALID, "InvalidSpec", str(exc))]
        causes += [Condition.unknown(t, "SpecInvalid", "not checked while the spec is invalid")
                   for t in (DATABASE_REACHABLE, QUEUE_DECLARED, DEPLOYMENT_AVAILABLE)]
        return _finish(causes, previous, now, generation, {}, events, None)

    result_status["queueName"] = config.name
    result_status["deployment"] = deployment_name(name)
    causes.append(Condition.true(SPEC_VALID, "Valid", "the spec is valid"))

    db_causes: list[Condition] = []
    try:
        url = await database_url(namespace, parsed.database_secret_ref)
        pool = await database_pool(databases, url)
        db_causes.append(Condition.true(DATABASE_REACHABLE, "Connected", "the database is reachable and migrated"))
        before = await get_queue(pool, config.name)
        await put_queue(pool, config)
        change = _config_changes(before, config)
        if change:
            emit("Normal", "QueueConfigured", change)
        db_causes.append(Condition.true(QUEUE_DECLARED, "Declared", f"queue {config.name!r} is declared"))
    except Problem as problem:
        retry = problem
        db_causes = [problem.condition()] if problem.condition_type == DATABASE_REACHABLE else [*db_causes,
                                                                                              problem.condition()]
        if not any(c.type == QUEUE_DECLARED for c in db_causes):
            db_causes.append(Condition.unknown(QUEUE_DECLARED, "DatabaseUnavailable",
                                               "not declared until the database is reachable"))
    except Exception as exc:  # a Postgres error while declaring: report it, retry with backoff
        retry = Problem(QUEUE_DECLARED, "DeclareFailed",
                        f"declaring queue {config.name!r} failed ({type(exc).__name__}: {exc}); retrying")
        db_causes.append(retry.condition())
    causes += db_causes

    try:
        live = await converge_deployment(owner, parsed, emit)
        causes.append(availability(live))
    except Problem as problem:
        causes.append(problem.condition())
        retry = retry or problem
    return _finish(causes, previous, now, generation, result_status, events, retry)


def _finish(causes: list[Condition], previous: Any, now: str, generation: int | None, status: dict[str, Any],
            events: list[tuple[str, str, str]], retry: Problem | None) -> QueueResult:
    conditions = with_ready(causes)
    for t in transitions(conditions, previous):
        events.append((t.event_type, t.reason, t.message))
    status["conditions"] = to_status(conditions, previous, now, generation)
    if generation is not None:
        status["observedGeneration"] = generation
    return QueueResult(status=status, retry=retry, events=events)


async def delete_queue_resources(*, name: str, namespace: str, spec: Mapping[str, Any],
                                 databases: Databases) -> list[tuple[str, str, str]]:
    """On Queue deletion: remove the worker Deployment (the owner reference would let the
    garbage collector do it too, but not before the Queue is gone, and not at all where GC
    is off). The queue's jobs are kept unless ``deletionPolicy: Delete``."""
    from shoal.queues import delete_queue

    events: list[tuple[str, str, str]] = []
    if await kube.delete_deployment(namespace, deployment_name(name)):
        events.append(("Normal", "DeploymentDeleted", f"deleted Deployment {deployment_name(name)}"))
    try:
        parsed = parse_queue_spec(namespace, name, spec)
    except ValidationError as exc:  # nothing can be trusted to say which jobs to delete: keep them
        events.append(("Warning", "JobsKept", f"{exc}; the queue's jobs in Postgres were kept"))
        return events
    if parsed.deletion_policy != "Delete":
        return events
    url = await database_url(namespace, parsed.database_secret_ref)
    pool = await database_pool(databases, url)
    async with pool.acquire() as conn:
        await delete_queue(conn, parsed.queue_name, delete_jobs=True)
    metrics.forget_queue(parsed.queue_name)
    events.append(("Normal", "JobsDeleted",
                   f"deleted queue {parsed.queue_name!r} and its jobs (deletionPolicy: Delete)"))
    return events
