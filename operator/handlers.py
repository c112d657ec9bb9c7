"""Kopf wiring: which resource event runs which reconciler. No logic lives here.

Handler map (all for group shoal.dev, version v1alpha1):

- Queue create / update / resume → `reconcile_queue`; a transient problem (Secret missing,
  database unreachable) raises TemporaryError so kopf retries with exponential backoff.
- Queue timer (every ``resync_seconds``) → `reconcile_queue` again: the queue's row in Postgres,
  drift correction of the Deployment (never its replicas), conditions. Never raises: the next
  tick retries.
- Queue daemon → `shoal.operator.scaling.queue_autoscaler`: the Queue's autoscaler (the
  loop `shoal up` runs too), the only writer of the worker Deployment's replicas once it
  exists (through its scale subresource) and of Scaled Events; it owns the counts and
  replicas in the Queue's status. Kopf runs it only on the active replica
  (peering pauses stop daemons) and stops it before the Queue's deletion handler runs.
- Queue delete → `delete_queue_resources` (explicit Deployment delete; jobs kept unless
  ``deletionPolicy: Delete``). Kopf's finalizer keeps the Queue until this succeeds.
- CronJob create / update / resume → one immediate `reconcile_cron` (quick feedback on a
  bad schedule); CronJob timer (every ``cron_interval``) → `reconcile_cron` fires due ticks.
- login → the kubernetes client's credentials; startup → settings; cleanup → pools closed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any

import kopf

from shoal.backoff import loop_delay
from shoal.operator.config import OperatorConfig
from shoal.operator.cron import format_time
from shoal.operator.cron_reconciler import CronMemo, CronResult, reconcile_cron
from shoal.operator.databases import Databases
from shoal.operator.problems import Problem
from shoal.operator.queue_reconciler import QueueResult, delete_queue_resources, reconcile_queue
from shoal.operator.scaling import queue_autoscaler as build_queue_autoscaler
from shoal.operator.scaling import run_queue_scaler

GROUP, VERSION = "shoal.dev", "v1alpha1"
log = logging.getLogger("shoal.operator")


def _now() -> str:
    return format_time(dt.datetime.now(dt.UTC)) or ""


def _post(body: kopf.Body, events: Iterable[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message[:1024])


def _apply(body: kopf.Body, patch: kopf.Patch, result: QueueResult | CronResult) -> None:
    if result.status:
        for key, value in result.status.items():
            patch.status[key] = value
    _post(body, result.events)


PROBLEM_BACKOFF_CAP = 60.0  # s: the longest wait before kopf retries a transient problem


def _problem_delay(retry: int) -> float:
    """Seconds before kopf's next try; ``retry`` is kopf's count of earlier retries (0 at first)."""
    return loop_delay(retry + 1, base=1.0, cap=PROBLEM_BACKOFF_CAP)


def _retry_later(problem: Problem | None, retry: int) -> None:
    """Transient problems are retried by kopf with backoff; spec problems wait for a spec edit."""
    if problem is not None and problem.transient:
        raise kopf.TemporaryError(str(problem), delay=_problem_delay(retry))


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, databases: Databases) -> None:
    """Register every handler in ``registry`` (no module-level side effects)."""

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Our Events are posted explicitly on meaningful changes; kopf adds its own only for
        # warnings and errors (handler failures), not for every info line.
        settings.posting.level = logging.WARNING
        settings.watching.reconnect_backoff = 1.0
        settings.persistence.finalizer = "shoal.dev/operator"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shoal.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="shoal.dev")
        settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own does not get kopf's default login handler: use the same
        # credentials the kubernetes client loaded (in-cluster or KUBECONFIG).
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def close_pools(**_: Any) -> None:
        await databases.close()

    @kopf.on.delete(GROUP, VERSION, "cronjobs", optional=True, registry=registry)
    @kopf.on.delete(GROUP, VERSION, "queues", optional=True, registry=registry)
    def forget_lock(meta: kopf.Meta, **_: Any) -> None:
        locks.pop(str(meta.get("uid")), None)

    locks: dict[str, asyncio.Lock] = {}

    def lock(meta: kopf.Meta) -> asyncio.Lock:
        """One reconcile at a time per object: kopf runs a change handler and a timer of the same
        object concurrently, and two passes must not race to create the same Deployment."""
        return locks.setdefault(str(meta.get("uid") or (meta.get("namespace"), meta.get("name"))), asyncio.Lock())

    async def queue(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                    patch: kopf.Patch) -> QueueResult:
        async with lock(meta):
            result = await reconcile_queue(
                name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""), spec=dict(spec),
                status=dict(status), generation=meta.get("generation"), databases=databases, now=_now())
        _apply(body, patch, result)
        log.debug("reconciled Queue %s/%s", meta["namespace"], meta["name"])
        return result

    @kopf.on.create(GROUP, VERSION, "queues", registry=registry)
    @kopf.on.update(GROUP, VERSION, "queues", field="spec", registry=registry)
    @kopf.on.resume(GROUP, VERSION, "queues", registry=registry)
    async def queue_changed(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                            patch: kopf.Patch, retry: int, **_: Any) -> None:
        result = await queue(body, spec, status, meta, patch)
        _retry_later(result.retry, retry)

    @kopf.timer(GROUP, VERSION, "queues", interval=config.resync_seconds, initial_delay=config.resync_seconds,
                backoff=config.resync_seconds, registry=registry)
    async def queue_resync(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                           patch: kopf.Patch, **_: Any) -> None:
        await queue(body, spec, status, meta, patch)

    # The autoscaler: one long-running loop per Queue. On stop (Queue deleted, this replica
    # paused by peering, operator exiting) it is asked to exit at its next wait; after
    # cancellation_backoff it is cancelled, and abandoned after cancellation_timeout more.
    @kopf.daemon(GROUP, VERSION, "queues", cancellation_backoff=5.0, cancellation_timeout=10.0,
                 registry=registry)
    async def queue_autoscaler(stopped: kopf.DaemonStopped, body: kopf.Body, meta: kopf.Meta, **_: Any) -> None:
        scaler = build_queue_autoscaler(name=meta["name"], namespace=meta["namespace"], body=body,
                                        databases=databases,
                                        emit=lambda kind, reason, message: _post(body, [(kind, reason, message)]))
        await run_queue_scaler(scaler, stopped)

    @kopf.on.delete(GROUP, VERSION, "queues", registry=registry)
    async def queue_deleted(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, retry: int, **_: Any) -> None:
        try:
            events = await delete_queue_resources(name=meta["name"], namespace=meta["namespace"], spec=dict(spec),
                                                  databases=databases)
        except Problem as problem:
            message = (f"{problem}; the Queue stays until its jobs can be deleted (or set "
                       "spec.deletionPolicy: Retain to keep them)")
            _post(body, [("Warning", problem.reason, message)])
            raise kopf.TemporaryError(message, delay=_problem_delay(retry)) from None
        _post(body, events)

    async def cron(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                   patch: kopf.Patch, memo: kopf.Memo) -> CronResult:
        state = memo.get("shoal_cron")
        if not isinstance(state, CronMemo):
            state = memo["shoal_cron"] = CronMemo()
        async with lock(meta):
            result = await reconcile_cron(
                name=meta["name"], namespace=meta["namespace"], spec=dict(spec), status=dict(status),
                created=meta.get("creationTimestamp"), generation=meta.get("generation"), databases=databases,
                memo=state, now=dt.datetime.now(dt.UTC), monotonic=time.monotonic(),
                resync=config.cron_resync_seconds)
        _apply(body, patch, result)
        return result

    @kopf.on.create(GROUP, VERSION, "cronjobs", registry=registry)
    @kopf.on.update(GROUP, VERSION, "cronjobs", field="spec", registry=registry)
    @kopf.on.resume(GROUP, VERSION, "cronjobs", registry=registry)
    async def cron_changed(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                           patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        # No retry here: the timer below runs every cron_interval anyway.
        await cron(body, spec, status, meta, patch, memo)

    @kopf.timer(GROUP, VERSION, "cronjobs", interval=config.cron_interval, backoff=config.cron_interval * 5,
                registry=registry)
    async def cron_tick(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                        patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        await cron(body, spec, status, meta, patch, memo)
