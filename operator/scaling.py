"""The Kubernetes backend of the autoscaler: one control loop per Queue, run as a kopf daemon.

Each Queue gets a `QueueScaler` that runs `shoal.scaler.loop.Autoscaler.tick` with a
`DeploymentScaleTarget`: the worker Deployment's replicas are read and written through its
``scale`` subresource only, so a scale never touches (or conflicts with) the pod template
the reconciler converges. The loop ticks every ``spec.autoscaling.pollIntervalSeconds``
and at once when a job is enqueued (one LISTEN connection per database, shared by every
Queue on it), with a small minimum gap so a producer enqueueing thousands of times a
second does not turn into thousands of API reads.

Why a kopf daemon and not tasks of our own: kopf already gives exactly the lifecycle this
needs. A daemon starts when a Queue appears (or the operator starts, or becomes the active
peer), stops when the Queue is deleted (before the deletion handler and finalizer run, so
nothing scales a Deployment that is going away), and all daemons stop when peering pauses
this replica in favour of another (``DaemonStoppingReason.OPERATOR_PAUSING``), so exactly
one operator replica scales. Its ``body`` is a live view, so the policy is rebuilt from
the current spec on every tick and spec edits apply without a restart.

Every tick the loop updates the operator's gauges; Queue status is patched only when a
value changed: at once on a scale, at most every `STATUS_COUNTS_INTERVAL` seconds for
counts. It owns the status keys in `SCALER_STATUS_KEYS`; the reconciler owns the others.

With autoscaling off (``minReplicas == maxReplicas`` and no ``scaleToZero``) the loop still
measures and reports, but never writes replicas: whoever owns the count (KEDA, an HPA,
``kubectl scale``) keeps it. Errors (database down, Secret or Deployment missing, API
errors) are logged and retried with exponential backoff; a loop never dies of them, and
each Queue's loop is independent of the others. While the reconciler reports the Queue's
database unreachable (its DatabaseReachable condition), the loop waits for it instead of
retrying connections of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from shoal.errors import ValidationError
from shoal.operator import kube, metrics
from shoal.operator.conditions import DATABASE_REACHABLE
from shoal.operator.cron import format_time
from shoal.operator.databases import Databases
from shoal.operator.naming import deployment_name
from shoal.operator.queue_config import postgres_queue_name
from shoal.operator.sources import database_url
from shoal.queues import ready_and_running
from shoal.ratelimit import parse_rate_limit
from shoal.scaler.decision import Decision, Policy, ScalerState
from shoal.scaler.loop import Autoscaler, EnqueueWakeups, Measurement, measure

log = logging.getLogger("shoal.operator.scaling")

Emit = Callable[[str, str, str], None]  # (type, reason, message) → an Event on the Queue

SCALER_STATUS_KEYS = ("pending", "running", "replicas", "desiredReplicas", "lastScaleTime", "lastScaleReason")
URGENT_STATUS_KEYS = frozenset({"replicas", "desiredReplicas", "lastScaleTime", "lastScaleReason"})
STATUS_COUNTS_INTERVAL = 5.0  # seconds between status patches for changed counts alone
STATUS_COUNT_CAP = 100_000  # status shows a deep backlog up to this (the decision's count stops earlier)
MIN_WAKE_GAP = 0.2  # seconds: enqueue wake-ups closer than this are merged into one tick
TICK_TIMEOUT = 15.0  # a tick that hangs (a database that stopped answering) is abandoned and retried
MAX_BACKOFF = 30.0
URL_REFRESH = 60.0  # re-read the Secret this often, so a changed database URL is picked up


# --------------------------------------------------------------------------- pure parts

def queue_policy(spec: Mapping[str, Any]) -> Policy:
    """The decision's policy from a Queue's spec (CRD defaults applied). Raises ValidationError."""
    rate = spec.get("rateLimit")
    limit = spec.get("concurrencyLimit")
    return Policy.from_spec(
        spec.get("autoscaling") or {},
        concurrency=int(spec.get("concurrency", 10)),
        rate_limit=parse_rate_limit(rate, "spec.rateLimit").per_second if rate else None,
        concurrency_limit=int(limit) if limit is not None else None,
    )


def poll_interval(spec: Mapping[str, Any]) -> float:
    """``spec.autoscaling.pollIntervalSeconds`` (default 1 s), kept within (0.05 s, 3600 s]."""
    try:
        value = float((spec.get("autoscaling") or {}).get("pollIntervalSeconds", 1.0))
    except (TypeError, ValueError):
        return 1.0
    if not math.isfinite(value) or value <= 0:
        return 1.0
    return min(max(value, 0.05), 3600.0)


def database_reachable(status: Mapping[str, Any]) -> bool | None:
    """The reconciler's DatabaseReachable condition: True, False, or None when not reported yet."""
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == DATABASE_REACHABLE), None)
    if cond is None or cond.get("status") not in ("True", "False"):
        return None
    return bool(cond["status"] == "True")


def retry_delay(interval: float, failures: int) -> float:
    """Backoff after ``failures`` failed ticks in a row: 1, 2, 4 ... × max(interval, 1 s), ≤ 30 s."""
    return float(min(MAX_BACKOFF, max(interval, 1.0) * 2 ** min(max(failures - 1, 0), 10)))


def status_patch(written: Mapping[str, Any], wanted: Mapping[str, Any], *, now: float,
                 last_patch: float | None, min_interval: float = STATUS_COUNTS_INTERVAL) -> dict[str, Any] | None:
    """The status keys to patch now, or None.

    Only keys whose value differs from what was last written are sent. A change to replicas,
    desired replicas or the last scale is sent at once; a change of counts alone waits until
    `min_interval` seconds have passed since the last patch (a busy queue's counts change
    every tick, and one status write per second per Queue would load the API server and
    every watcher of Queues for nothing).
    """
    changed = {k: v for k, v in wanted.items() if k not in written or written[k] != v}
    if not changed:
        return None
    if URGENT_STATUS_KEYS & changed.keys() or last_patch is None or now - last_patch >= min_interval:
        return changed
    return None


# --------------------------------------------------------------------------- the target

@dataclass(frozen=True)
class DeploymentScaleTarget:
    """A worker Deployment's replica count, through its ``scale`` subresource only."""

    namespace: str
    name: str

    async def current_replicas(self) -> int:
        """``spec.replicas`` (what was requested, not ready pods). Raises kube.NotFound."""
        return await kube.read_deployment_scale(self.namespace, self.name)

    async def set_replicas(self, desired: int, decision: Decision) -> None:
        await kube.scale_deployment(self.namespace, self.name, desired)


# --------------------------------------------------------------------------- the loop

class QueueScaler:
    """One Queue's control loop (see the module docstring). ``body`` is kopf's live view."""

    def __init__(self, *, name: str, namespace: str, body: Mapping[str, Any], databases: Databases,
                 emit: Emit, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.namespace = namespace
        self.body = body
        self.databases = databases
        self.emit = emit
        self.clock = clock
        self.target = DeploymentScaleTarget(namespace, deployment_name(name))
        status = body.get("status") or {}
        self.written: dict[str, Any] = {k: status[k] for k in SCALER_STATUS_KEYS if k in status}
        self.last_scale: dict[str, Any] = {}
        self.last_patch: float | None = None
        self.policy = Policy()
        self.queue_name = ""
        self.url: str | None = None
        self.secret_ref: dict[str, Any] = {}
        self.url_at = 0.0
        self.pool: asyncpg.Pool | None = None
        self.wakeups: EnqueueWakeups | None = None
        self.wake: asyncio.Event | None = None
        self.autoscaler: Autoscaler | None = None
        self.failures = 0
        self.last_error = ""
        self.wide_pending: tuple[float, int] | None = None
        self.tick_started = 0.0
        self.last_reason = ""

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.body.get("spec") or {})

    # -- running

    async def run(self, stop: asyncio.Event) -> None:
        log.debug("autoscaler started for Queue %s/%s", self.namespace, self.name)
        try:
            last_tick = -math.inf
            while not stop.is_set():
                last_tick = self.clock()
                delay = await self.step()
                await self._wait(stop, delay, last_tick)
        finally:
            self._unsubscribe()
            if self.queue_name:  # the active replica (or none) exports this queue's series
                metrics.forget_queue(self.queue_name)
            log.debug("autoscaler stopped for Queue %s/%s", self.namespace, self.name)

    async def _wait(self, stop: asyncio.Event, delay: float, last_tick: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if self.wake is not None:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        # Woken by an enqueue right after a tick: merge a storm of wake-ups into one tick.
        gap = MIN_WAKE_GAP - (self.clock() - last_tick)
        if gap > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)

    async def step(self) -> float:
        """One tick with its error handling; returns how long to wait before the next."""
        spec = self.spec
        interval = poll_interval(spec)
        try:
            self.policy = queue_policy(spec)
            queue_name = postgres_queue_name(self.namespace, self.name, spec)
        except (ValidationError, ValueError, TypeError) as exc:
            # The reconciler reports an invalid spec as a condition; wait for it to be fixed.
            self._failed(f"invalid spec: {exc}", expected=True)
            return max(interval, 5.0)
        reachable = database_reachable(self.body.get("status") or {})
        if reachable is not True:
            # The reconciler connects first and reports it; until it has, do not add a second
            # stream of connection attempts (an unreachable host can hold a resolver thread
            # for seconds, and those threads are shared with every API call).
            self._failed(f"waiting for the database (DatabaseReachable is {reachable})", expected=True)
            return max(interval, 2.0)
        try:
            await asyncio.wait_for(self.tick(spec, queue_name), TICK_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never die: report, back off, re-resolve the database
            self.url = None
            if self.wakeups is not None and isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                                             TimeoutError)):
                await self.wakeups.close()
            expected = isinstance(exc, kube.NotFound)  # the reconciler creates the Deployment
            self._failed(f"{type(exc).__name__}: {exc}", expected=expected)
            return retry_delay(interval, self.failures)
        if self.failures:
            log.info("autoscaler for Queue %s/%s recovered after %d failed tick(s)", self.namespace, self.name,
                     self.failures)
        self.failures, self.last_error = 0, ""
        return interval

    def _failed(self, error: str, *, expected: bool) -> None:
        self.failures += 1
        level = logging.DEBUG if expected or error == self.last_error else logging.WARNING
        log.log(level, "autoscaler tick for Queue %s/%s failed (%d in a row, retrying with backoff): %s",
                self.namespace, self.name, self.failures, error)
        self.last_error = error

    async def _connect(self, spec: Mapping[str, Any], queue_name: str) -> tuple[asyncpg.Pool, Autoscaler]:
        ref = dict(spec.get("databaseSecretRef") or {})
        if self.url is None or ref != self.secret_ref or self.clock() - self.url_at > URL_REFRESH:
            url = await database_url(self.namespace, ref)
            pool = await self.databases.measure_pool(url)
            self.url, self.secret_ref, self.url_at = url, ref, self.clock()
            if pool is not self.pool:
                self.pool, self.autoscaler = pool, None
            wakeups = self.databases.wakeups(url)
            if wakeups is not self.wakeups:
                self._unsubscribe()
                self.wakeups = wakeups
        if queue_name != self.queue_name:
            self._unsubscribe()
            self.queue_name, self.autoscaler = queue_name, None
        assert self.pool is not None and self.wakeups is not None
        if self.wake is None:
            self.wake = self.wakeups.subscribe(queue_name)
        await self.wakeups.ensure_connected()
        if self.autoscaler is None:
            self.autoscaler = Autoscaler(
                queue=queue_name, pool=self.pool, target=self.target, policy=lambda: self.policy,
                interval=poll_interval(spec), on_decision=self._on_decision,
                paused=lambda: bool(self.spec.get("paused", False)))
        return self.pool, self.autoscaler

    def _unsubscribe(self) -> None:
        if self.wakeups is not None and self.wake is not None:
            self.wakeups.unsubscribe(self.queue_name, self.wake)
        self.wake = None

    async def tick(self, spec: Mapping[str, Any], queue_name: str) -> None:
        pool, autoscaler = await self._connect(spec, queue_name)
        assert self.wake is not None
        self.wake.clear()  # an enqueue from now on ticks again
        self.tick_started = time.perf_counter()
        if self.policy.autoscaling_enabled:
            await autoscaler.tick()  # calls _on_decision
            return
        # Autoscaling off: measure and report, never write replicas. Forget the window so
        # that turning autoscaling back on starts fresh (from the count found then).
        autoscaler.state = ScalerState()
        m = await measure(pool, queue_name, self.policy)
        current = await self.target.current_replicas()
        await self._report(None, m, current)

    async def _on_decision(self, decision: Decision, m: Measurement, current: int) -> None:
        await self._report(decision, m, current)

    # -- reporting

    async def _status_pending(self, m: Measurement) -> int:
        """Ready jobs for status and the gauge: the decision's count stops at what maxReplicas
        can use; beyond it, count further (up to STATUS_COUNT_CAP) at most every few seconds."""
        if not m.ready_capped:
            self.wide_pending = None
            return m.ready
        now = self.clock()
        if self.wide_pending is None or now - self.wide_pending[0] >= STATUS_COUNTS_INTERVAL:
            assert self.pool is not None
            ready, _ = await ready_and_running(self.pool, self.queue_name, STATUS_COUNT_CAP)
            self.wide_pending = (now, max(ready, m.ready))
        return max(self.wide_pending[1], m.ready)

    async def _report(self, decision: Decision | None, m: Measurement, before: int) -> None:
        queue = self.queue_name
        scaled = decision is not None and decision.desired != before
        desired = decision.desired if decision is not None else before
        pending = await self._status_pending(m)
        metrics.QUEUE_PENDING.labels(queue).set(pending)
        metrics.QUEUE_RUNNING.labels(queue).set(m.running)
        metrics.DESIRED_REPLICAS.labels(queue).set(desired)
        metrics.CURRENT_REPLICAS.labels(queue).set(desired if scaled else before)
        if scaled and decision is not None:
            metrics.SCALE_EVENTS.labels(queue, decision.direction).inc()
            log.info("scaled Deployment %s/%s: %s", self.namespace, self.target.name, decision.reason)
            self.emit("Normal", "Scaled", decision.reason)
            self.last_scale = {"lastScaleTime": format_time(dt.datetime.now(dt.UTC)),
                               "lastScaleReason": decision.reason[:1024]}
        metrics.SCALE_DECISION_SECONDS.labels(queue).observe(time.perf_counter() - self.tick_started)
        reason = decision.reason if decision is not None else "autoscaling off (minReplicas == maxReplicas)"
        if reason != self.last_reason:
            log.debug("Queue %s/%s: %s", self.namespace, self.name, reason)
            self.last_reason = reason
        wanted = {"pending": pending, "running": m.running, "replicas": desired if scaled else before,
                  "desiredReplicas": desired, **self.last_scale}
        now = self.clock()
        patch = status_patch(self.written, wanted, now=now, last_patch=self.last_patch)
        if patch:
            await kube.patch_queue_status(self.namespace, self.name, patch)
            self.written.update(patch)
            self.last_patch = now


async def run_queue_scaler(scaler: QueueScaler, stopped: Any) -> None:
    """Run ``scaler`` until kopf's ``stopped`` flag is set (Queue deleted, operator pausing or exiting)."""
    stop = asyncio.Event()

    async def watch() -> None:
        await stopped.wait()
        stop.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await scaler.run(stop)
    finally:
        watcher.cancel()
