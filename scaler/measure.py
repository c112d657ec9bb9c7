"""What the autoscaler reads from PostgreSQL each tick (the wake-up on enqueue: wakeups.py).

The queue's flow control (``paused``, the rate limit, the concurrency cap) is read from its
``shoal.queues`` row, the same row the workers obey, and not from the backend's own
configuration: `shoal queue pause`, a Queue's ``spec.paused`` (written there by the
reconciler) and a limit set with `shoal queue create` all reach the loop the way they
reach the workers, so the autoscaler never adds replicas that the workers would leave
idle. Only the scaling knobs (bounds, target, delay) come from the backend.

Counting is bounded (``LIMIT n``) and runs on a pool with a ``statement_timeout``, so a
huge backlog or a stuck server can never hang a control loop (KEDA's PostgreSQL scaler
crash-looped on slow counts).

Throughput comes from what the workers already report in each heartbeat (their handler runs
and summed run seconds; ``shoal.queue_throughput``): one more cheap query per tick, over one
row per live worker, never over the jobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from shoal import queries
from shoal.config import STALE_AFTER
from shoal.errors import UnknownQueueError
from shoal.queues import get_queue, ready_and_running
from shoal.scaler.decision import Policy

MEASURE_TIMEOUT_MS = 2000
# A worker is live while its last heartbeat is at most this old: the worker's default --stale-after,
# past which other workers judge it dead and rescue its jobs.
LIVE_WORKER_SECONDS = STALE_AFTER


@dataclass(frozen=True)
class Measurement:
    """One tick's reading of a queue.

    `ready` counts jobs runnable now (not those scheduled for later), bounded: `ready_capped`
    says the bound was hit. `paused`, `rate_limit` (jobs/s) and `concurrency_limit` are the
    queue row's flow control. `seconds` is how long the reading took. `oldest_ready_age` is the
    age in seconds of the oldest ready job, by its run_at (None: no job is ready; see
    `queries.QUEUE_HEALTH`), and `live_workers` counts the queue's workers
    with a heartbeat within `LIVE_WORKER_SECONDS`. `reporting` counts the live workers that have
    beaten twice, `runs_per_second` their summed handler runs per second between their last two
    beats, and `seconds_per_run` the mean duration of those runs (None: none finished).
    """

    ready: int
    running: int
    ready_capped: bool
    seconds: float
    paused: bool = False
    rate_limit: float | None = None
    concurrency_limit: int | None = None
    oldest_ready_age: float | None = None
    live_workers: int = 0
    reporting: int = 0
    runs_per_second: float = 0.0
    seconds_per_run: float | None = None


def count_cap(policy: Policy) -> int:
    """Counting beyond what max replicas could use changes no decision, so stop there."""
    return max(1, policy.max_replicas * policy.target) + 1


async def measure(pool: asyncpg.Pool, queue: str, policy: Policy, *, cap: int | None = None) -> Measurement:
    """Ready and running jobs (counted up to `cap`, default `count_cap`), the oldest ready job's
    age, the live workers, their throughput and the queue's flow control. Raises UnknownQueueError
    while the queue is not declared (a Queue whose reconcile has not run yet)."""
    cap = cap if cap is not None else count_cap(policy)
    started = time.perf_counter()
    async with pool.acquire() as conn:
        config = await get_queue(conn, queue)
        if config is None:
            raise UnknownQueueError(queue)
        ready, running = await ready_and_running(conn, queue, cap)
        health = await conn.fetchrow(queries.QUEUE_HEALTH, queue, LIVE_WORKER_SECONDS)
    rate = config.rate_limit
    return Measurement(ready, running, ready >= cap, time.perf_counter() - started, paused=config.paused,
                       rate_limit=rate.per_second if rate else None, concurrency_limit=config.concurrency_limit,
                       oldest_ready_age=health["oldest_ready_age"], live_workers=health["live_workers"],
                       reporting=health["reporting"], runs_per_second=float(health["runs_per_second"]),
                       seconds_per_run=health["seconds_per_run"])


async def create_measure_pool(database_url: str, *, max_size: int = 4) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url, min_size=1, max_size=max_size,
        server_settings={"statement_timeout": str(MEASURE_TIMEOUT_MS), "application_name": "shoal-autoscaler"},
    )
