"""What a Queue's autoscaler reports on each tick: Queue status, Scaled Events and gauges.

`QueueStatus.report` is the loop's ``on_tick`` callback (`shoal.scaler.loop.TickReport`), so
a Scaled Event is posted exactly when the loop wrote replicas, by the loop's own tick:
replicas and Scaled Events have one writer. The status keys in `SCALER_STATUS_KEYS` belong
to this reporter; the reconciler owns the others, and each sends merge patches of its own
keys only.

Names: ``ready`` jobs are runnable now, ``scheduled`` ones wait for their ``run_at``, and
the jobs' ``pending`` state is both. The CRD's status field and gauge that users already
read are called ``pending`` but hold the **ready** count (the CRD says so); in the code the
value is `ready`, and `STATUS_READY` / `metrics.QUEUE_READY` map it to those names.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from shoal.operator import kube, metrics
from shoal.operator.cron import format_time
from shoal.queues import ready_and_running
from shoal.scaler.loop import TickReport

log = logging.getLogger("shoal.operator.scaling")

Emit = Callable[[str, str, str], None]  # (type, reason, message) → an Event on the Queue

STATUS_READY = "pending"  # the CRD's status field for ready jobs (its printer column "Pending")
SCALER_STATUS_KEYS = (STATUS_READY, "running", "replicas", "desiredReplicas", "lastScaleTime", "lastScaleReason")
URGENT_STATUS_KEYS = frozenset({"replicas", "desiredReplicas", "lastScaleTime", "lastScaleReason"})
STATUS_COUNTS_INTERVAL = 5.0  # seconds between status patches for changed counts alone
STATUS_COUNT_CAP = 100_000  # status shows a deep backlog up to this (the decision's count stops earlier)


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


class QueueStatus:
    """One Queue's reporter. `status` is the Queue's status when the loop started (what was
    written before is not written again)."""

    def __init__(self, *, namespace: str, name: str, status: Mapping[str, Any], emit: Emit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace, self.name, self.emit, self.clock = namespace, name, emit, clock
        self.written: dict[str, Any] = {k: status[k] for k in SCALER_STATUS_KEYS if k in status}
        self.last_scale: dict[str, Any] = {}
        self.last_patch: float | None = None
        self.wide_ready: tuple[float, int] | None = None
        self.last_reason = ""

    async def report(self, tick: TickReport) -> None:
        queue, decision, m = tick.plan.queue, tick.decision, tick.measurement
        replicas = decision.desired if tick.scaled else tick.before
        ready = await self._ready(tick)
        metrics.QUEUE_READY.labels(queue).set(ready)
        metrics.QUEUE_RUNNING.labels(queue).set(m.running)
        metrics.OLDEST_READY_AGE.labels(queue).set(m.oldest_ready_age or 0.0)
        metrics.LIVE_WORKERS.labels(queue).set(m.live_workers)
        metrics.PAUSED.labels(queue).set(1 if m.paused else 0)
        metrics.DESIRED_REPLICAS.labels(queue).set(decision.desired)
        metrics.CURRENT_REPLICAS.labels(queue).set(replicas)
        metrics.SCALE_DECISION_SECONDS.labels(queue).observe(tick.seconds)
        if tick.scaled:
            metrics.SCALE_EVENTS.labels(queue, decision.direction).inc()
            self.emit("Normal", "Scaled", decision.reason)
            self.last_scale = {"lastScaleTime": format_time(dt.datetime.now(dt.UTC)),
                               "lastScaleReason": decision.reason[:1024]}
        if decision.reason != self.last_reason:
            log.debug("Queue %s/%s: %s", self.namespace, self.name, decision.reason)
            self.last_reason = decision.reason
        wanted = {STATUS_READY: ready, "running": m.running, "replicas": replicas,
                  "desiredReplicas": decision.desired, **self.last_scale}
        now = self.clock()
        patch = status_patch(self.written, wanted, now=now, last_patch=self.last_patch)
        if patch:
            await kube.patch_queue_status(self.namespace, self.name, patch)
            self.written.update(patch)
            self.last_patch = now

    async def _ready(self, tick: TickReport) -> int:
        """Ready jobs for status and the gauge: the decision's count stops at what the maximum
        can use; beyond it, count further (up to STATUS_COUNT_CAP) at most every few seconds."""
        m = tick.measurement
        if not m.ready_capped:
            self.wide_ready = None
            return m.ready
        now = self.clock()
        if self.wide_ready is None or now - self.wide_ready[0] >= STATUS_COUNTS_INTERVAL:
            ready, _ = await ready_and_running(tick.plan.pool, tick.plan.queue, STATUS_COUNT_CAP)
            self.wide_ready = (now, max(ready, m.ready))
        return max(self.wide_ready[1], m.ready)
