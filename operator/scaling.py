"""The Kubernetes backend of the autoscaler: the shared loop (`shoal.scaler.loop.Autoscaler`)
for each Queue, run as a kopf daemon.

This module only says what is Kubernetes-specific; running, waiting, waking on enqueue,
backing off and deciding are the loop's, the same code `shoal up` runs:

* `QueueSource` gives the loop its plan on every tick, from kopf's live ``body``: the Queue's
  spec parsed by `shoal.operator.queue_spec` (so spec edits apply without a restart), the
  measuring pool and the LISTEN connection shared by every Queue on that database
  (`Databases`), and the poll interval. Pause and flow control are not taken from the spec:
  the loop reads them from the queue's row in Postgres, which the reconciler writes from the
  spec and the workers obey.
* `DeploymentScaleTarget` reads and writes the worker Deployment's replicas through its
  ``scale`` subresource only, so a scale never touches (or conflicts with) the pod template
  the reconciler converges. Just before a scale-down it annotates the worker pods with their
  running jobs as pod-deletion-cost (`shoal.operator.deletion_cost`), so idle pods go first.
* `shoal.operator.scale_status.QueueStatus` reports each tick (status, Scaled Events, gauges).

The loop is built with ``hands_off_when_fixed``: with autoscaling off (``minReplicas ==
maxReplicas`` and no ``scaleToZero``) it measures and reports but never writes replicas, so
KEDA, an HPA or ``kubectl scale`` can own them.

Why a kopf daemon and not tasks of our own: kopf already gives exactly the lifecycle this
needs. A daemon starts when a Queue appears (or the operator starts, or becomes the active
peer), stops when the Queue is deleted (before the deletion handler and finalizer run, so
nothing scales a Deployment that is going away), and all daemons stop when peering pauses
this replica in favour of another (``DaemonStoppingReason.OPERATOR_PAUSING``), so exactly
one operator replica scales. While the reconciler reports the Queue's database unreachable
(its DatabaseReachable condition), the loop waits for it instead of retrying connections of
its own; an invalid spec waits for the reconciler's SpecValid report to be acted on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shoal.errors import ValidationError
from shoal.operator import kube, metrics
from shoal.operator.conditions import DATABASE_REACHABLE
from shoal.operator.databases import Databases
from shoal.operator.deletion_cost import running_by_worker, spare_busy_pods
from shoal.operator.naming import deployment_name
from shoal.operator.queue_spec import SecretRef, parse_queue_spec, resolve_queue_name, scaling_policy
from shoal.operator.scale_status import Emit, QueueStatus
from shoal.operator.sources import database_url
from shoal.scaler.decision import Decision
from shoal.scaler.loop import Autoscaler, NotReady, Plan

URL_REFRESH = 60.0  # re-read the Secret this often, so a changed database URL is picked up
INVALID_SPEC_RETRY = 5.0  # s between looks at a spec the reconciler reported invalid
DATABASE_WAIT_RETRY = 2.0  # s between looks at the DatabaseReachable condition


def database_reachable(status: Mapping[str, Any]) -> bool | None:
    """The reconciler's DatabaseReachable condition: True, False, or None when not reported yet."""
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == DATABASE_REACHABLE), None)
    if cond is None or cond.get("status") not in ("True", "False"):
        return None
    return bool(cond["status"] == "True")


class DeploymentScaleTarget:
    """A worker Deployment's replica count, through its ``scale`` subresource only. Before a
    scale-down it gives each worker pod its running jobs as pod-deletion-cost
    (`shoal.operator.deletion_cost`), so the ReplicaSet deletes idle pods first; ``running``
    reads the running jobs per worker id (None: no such step)."""

    def __init__(self, namespace: str, name: str,
                 running: Callable[[], Awaitable[Mapping[str, int]]] | None = None) -> None:
        self.namespace, self.name, self.running = namespace, name, running
        self.costs_written: dict[str, int] = {}  # pod → the deletion cost last written to it

    async def current_replicas(self) -> int:
        """``spec.replicas`` (what was requested, not ready pods)."""
        try:
            return await kube.read_deployment_scale(self.namespace, self.name)
        except kube.NotFound:
            raise NotReady(f"Deployment {self.name} does not exist yet (the reconciler creates it)") from None

    async def set_replicas(self, desired: int, decision: Decision) -> None:
        if decision.direction == "down" and desired > 0 and self.running is not None:  # to 0: every pod goes
            await spare_busy_pods(self.namespace, self.name, self.running, self.costs_written)
        await kube.scale_deployment(self.namespace, self.name, desired)


class QueueSource:
    """A Queue's plan for each tick, from kopf's live view of the resource."""

    def __init__(self, *, name: str, namespace: str, body: Mapping[str, Any], databases: Databases,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.namespace, self.body, self.databases, self.clock = name, namespace, body, databases, clock
        self.url: str | None = None
        self.secret_ref: SecretRef | None = None
        self.url_at = 0.0
        self.last: Plan | None = None  # this tick's plan (the scale target reads running jobs with it)

    async def plan(self) -> Plan:
        try:
            spec = parse_queue_spec(self.namespace, self.name, dict(self.body.get("spec") or {}))
        except ValidationError as exc:
            raise NotReady(f"invalid spec: {exc}", retry_after=INVALID_SPEC_RETRY) from None
        reachable = database_reachable(self.body.get("status") or {})
        if reachable is not True:
            # The reconciler connects first and reports it; until it has, do not add a second
            # stream of connection attempts (an unreachable host can hold a resolver thread
            # for seconds, and those threads are shared with every API call).
            raise NotReady(f"waiting for the database (DatabaseReachable is {reachable})",
                           retry_after=DATABASE_WAIT_RETRY)
        ref = spec.database_secret_ref
        if self.url is None or ref != self.secret_ref or self.clock() - self.url_at > URL_REFRESH:
            self.url = await database_url(self.namespace, ref)
            self.secret_ref, self.url_at = ref, self.clock()
        self.last = Plan(queue=spec.queue_name, pool=await self.databases.measure_pool(self.url),
                         policy=scaling_policy(spec), interval=spec.autoscaling.poll_interval_seconds,
                         wakeups=self.databases.wakeups(self.url))
        return self.last

    async def reset(self) -> None:
        self.url = None  # re-read the Secret: the URL may be why the tick failed
        self.last = None

    async def running_by_worker(self) -> Mapping[str, int]:
        """Running jobs per worker id of the queue this tick measured (empty before a plan)."""
        if self.last is None:
            return {}
        return await running_by_worker(self.last.pool, self.last.queue)


def queue_autoscaler(*, name: str, namespace: str, body: Mapping[str, Any], databases: Databases, emit: Emit,
                     clock: Callable[[], float] = time.monotonic) -> Autoscaler:
    """The loop for one Queue: its Deployment as target, its live spec as source, its status as report."""
    status = QueueStatus(namespace=namespace, name=name, status=body.get("status") or {}, emit=emit, clock=clock)
    source = QueueSource(name=name, namespace=namespace, body=body, databases=databases, clock=clock)
    try:  # the label of failures before the first plan names the queue
        default_queue = resolve_queue_name(namespace, name, dict(body.get("spec") or {}))
    except ValidationError:
        default_queue = f"{namespace}.{name}"

    def count_failure(reason: str, _exc: Exception) -> None:
        metrics.TICK_FAILURES.labels(scaler.queue or default_queue, reason).inc()

    scaler = Autoscaler(
        target=DeploymentScaleTarget(namespace, deployment_name(name), running=source.running_by_worker),
        source=source, on_tick=status.report, on_failure=count_failure, hands_off_when_fixed=True,
        name=f"Queue {namespace}/{name}", clock=clock)
    return scaler


async def run_queue_scaler(scaler: Autoscaler, stopped: Any) -> None:
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
        if scaler.queue:  # the active replica (or none) exports this queue's series
            metrics.forget_queue(scaler.queue)
