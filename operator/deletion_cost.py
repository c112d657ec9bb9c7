"""A scale-down that spares busy pods: each worker pod's pod-deletion-cost is its running jobs.

When a Deployment shrinks, its ReplicaSet picks the pods to delete, and among ready pods it
deletes those with the lowest ``controller.kubernetes.io/pod-deletion-cost`` annotation first
(pods without it count as 0). So just before the autoscaler lowers replicas
(`shoal.operator.scaling.DeploymentScaleTarget`), every live worker pod of the Queue gets
its running jobs as its cost: idle pods (cost 0) go first, and the busiest last. A pod that
is deleted anyway drains (``spec.worker.drainTimeoutSeconds``) before it stops.

Which pod runs what comes from PostgreSQL, not from the pods: a worker's id is
``<pod>-<pid>-<random>`` (the worker takes the pod's name from ``POD_NAME``, which the
Deployment sets from the downward API; without it the hostname, which is the pod's name
when that is at most 63 characters), its live workers are in ``shoal.workers``, and its
running jobs are ``shoal.jobs`` rows in state ``running`` plus the jobs of its open held
batches (``shoal.held_batches``: short jobs claimed in a transaction that stays open while they run).

The decision (`deletion_costs`, `cost_patches`) is pure; `running_by_worker` is the one
query; `spare_busy_pods` applies it and never blocks the scale-down: a failure is logged
and the scale goes ahead (the pods then go in the ReplicaSet's default order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

import asyncpg

from shoal.config import STALE_AFTER
from shoal.operator import kube
from shoal.operator.spec_fields import DNS_SUBDOMAIN

log = logging.getLogger("shoal.operator.scaling")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MAX_COST = 2**31 - 1  # the annotation is an int32
LIVE_SECONDS = STALE_AFTER  # a worker whose heartbeat is older is not counted (it is dead or being rescued)
ANNOTATE_TIMEOUT = 5.0  # s for all the pods' patches: the scale-down goes ahead after that
ANNOTATE_CONCURRENCY = 8

# $1 queue, $2 seconds since the last heartbeat of a live worker. Every live worker of the
# queue (an idle one too: its cost must drop to 0) and every worker holding a running job of
# it, with its running jobs: leased ones (the jobs_running index) and those of its open held batches.
RUNNING_BY_WORKER = """
SELECT k.worker_id,
       (SELECT count(*) FROM shoal.jobs j
         WHERE j.queue = $1 AND j.state = 'running' AND j.worker_id = k.worker_id)::integer
     + (SELECT coalesce(sum(cardinality(b.ids)), 0) FROM shoal.held_batches b
         WHERE b.worker_id = k.worker_id AND pg_xact_status(b.xact) = 'in progress')::integer AS running
  FROM (SELECT w.id AS worker_id FROM shoal.workers w
         WHERE w.queue = $1 AND w.heartbeat_at > now() - make_interval(secs => $2)
        UNION
        SELECT j.worker_id FROM shoal.jobs j
         WHERE j.queue = $1 AND j.state = 'running' AND j.worker_id IS NOT NULL) k
"""


def pod_of_worker(worker_id: str) -> str | None:
    """The pod a worker id names (``<pod>-<pid>-<random>``), or None if it is not of that form."""
    head, sep, _random = worker_id.rpartition("-")
    pod, sep_pid, pid = head.rpartition("-")
    if not (sep and sep_pid and pid.isdigit() and len(pod) <= 253 and DNS_SUBDOMAIN.fullmatch(pod)):
        return None
    return pod


def deletion_costs(running_by_worker: Mapping[str, int], deployment: str) -> dict[str, int]:
    """Each pod's deletion cost: the running jobs of its workers (0 for an idle pod). Only
    pods of ``deployment`` (named ``<deployment>-…``) are included: other workers on the same
    queue (`shoal up`, another cluster) are not ours to annotate."""
    costs: dict[str, int] = {}
    for worker_id, running in running_by_worker.items():
        pod = pod_of_worker(worker_id)
        if pod is None or not pod.startswith(f"{deployment}-"):
            continue
        costs[pod] = min(costs.get(pod, 0) + max(int(running), 0), MAX_COST)
    return costs


def cost_patches(costs: Mapping[str, int], written: Mapping[str, int]) -> dict[str, int]:
    """The pods whose annotation must be written: those whose cost differs from the last one
    written to them (all of them after an operator restart)."""
    return {pod: cost for pod, cost in costs.items() if written.get(pod) != cost}


async def running_by_worker(pool: asyncpg.Pool, queue: str) -> dict[str, int]:
    """Running jobs per worker id of ``queue`` (live idle workers included, with 0)."""
    rows = await pool.fetch(RUNNING_BY_WORKER, queue, LIVE_SECONDS)
    return {str(r["worker_id"]): int(r["running"]) for r in rows}


async def spare_busy_pods(namespace: str, deployment: str, running: Callable[[], Awaitable[Mapping[str, int]]],
                          written: MutableMapping[str, int]) -> None:
    """Annotate the Deployment's worker pods with their deletion cost (see the module
    docstring). `written` remembers what was written, across scale-downs; it is pruned to
    the pods found now. Never raises (except cancellation)."""
    try:
        costs = deletion_costs(await running(), deployment)
    except Exception as exc:
        log.warning("scale-down of %s/%s without pod-deletion costs: reading running jobs failed (%s: %s)",
                    namespace, deployment, type(exc).__name__, exc)
        return
    for gone in set(written) - set(costs):
        del written[gone]
    todo = cost_patches(costs, written)
    if not todo:
        return
    gate = asyncio.Semaphore(ANNOTATE_CONCURRENCY)

    async def annotate(pod: str, cost: int) -> None:
        async with gate:
            try:
                await kube.annotate_pod(namespace, pod, {DELETION_COST: str(cost)})
                written[pod] = cost
            except kube.NotFound:  # gone already (or a truncated hostname): nothing to spare
                written.pop(pod, None)

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(annotate(pod, cost) for pod, cost in sorted(todo.items())), return_exceptions=True),
            ANNOTATE_TIMEOUT)
    except TimeoutError:
        log.warning("scale-down of %s/%s: annotating %d pod(s) with their deletion cost took over %.0f s; "
                    "scaling anyway", namespace, deployment, len(todo), ANNOTATE_TIMEOUT)
        return
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        log.warning("scale-down of %s/%s: %d of %d pod-deletion-cost patches failed (first: %s: %s); "
                    "scaling anyway (the operator needs `patch` on pods)", namespace, deployment, len(failed),
                    len(todo), type(failed[0]).__name__, failed[0])
