"""The oldest ready job's age and the live workers, as the autoscaler measures them each tick
(shoal.scaler.measure, queries.QUEUE_HEALTH), on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shoal import client, queues
from shoal.scaler.decision import Policy
from shoal.scaler.measure import LIVE_WORKER_SECONDS, create_measure_pool, measure

POLICY = Policy(min_replicas=0, max_replicas=4, concurrency=10, scale_down_delay=5.0)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_measure_pool(db_url, max_size=2)
    yield p
    await p.close()


async def ago(conn: asyncpg.Connection, seconds: float) -> dt.datetime:
    """The server's now() minus `seconds` (no clock skew between the test and the server)."""
    now: dt.datetime = await conn.fetchval("SELECT now()")
    return now - dt.timedelta(seconds=seconds)


async def test_oldest_ready_age_is_the_oldest_due_job_across_priorities(
        conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await queues.declare_queue(conn, "age")
    m = await measure(pool, "age", POLICY)
    assert m.oldest_ready_age is None, "an empty queue has no oldest ready job"
    # The oldest ready job has the lowest priority: a scan of the highest priority alone misses it.
    await client.enqueue(conn, "age", "t", priority=5, run_at=await ago(conn, 60))
    await client.enqueue(conn, "age", "t", priority=0, run_at=await ago(conn, 300))
    await client.enqueue(conn, "age", "t", priority=0, run_at=await ago(conn, 100))
    # Scheduled (run_at in the future), at the highest priority and at the oldest one's: not ready.
    await client.enqueue(conn, "age", "t", priority=9, run_at=await ago(conn, -3600))
    await client.enqueue(conn, "age", "t", priority=0, run_at=await ago(conn, -7200))
    m = await measure(pool, "age", POLICY)
    assert m.oldest_ready_age is not None
    assert 300 <= m.oldest_ready_age < 360


async def test_scheduled_jobs_do_not_count(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await queues.declare_queue(conn, "later")
    for priority in (0, 3):
        await client.enqueue(conn, "later", "t", priority=priority, run_at=await ago(conn, -600))
    m = await measure(pool, "later", POLICY)
    assert m.oldest_ready_age is None and m.ready == 0


async def test_only_pending_jobs_of_the_queue_count(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await queues.declare_queue(conn, "mine")
    await queues.declare_queue(conn, "theirs")
    await client.enqueue(conn, "theirs", "t", run_at=await ago(conn, 1000))
    old = await client.enqueue(conn, "mine", "t", run_at=await ago(conn, 900))
    await client.enqueue(conn, "mine", "t", run_at=await ago(conn, 20))
    await conn.execute("UPDATE shoal.jobs SET state = 'running' WHERE id = $1", old)  # running: not ready
    m = await measure(pool, "mine", POLICY)
    assert m.oldest_ready_age is not None and 20 <= m.oldest_ready_age < 80


async def test_live_workers_have_a_fresh_heartbeat(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await queues.declare_queue(conn, "lw")
    assert (await measure(pool, "lw", POLICY)).live_workers == 0
    # A beat the way workers beat (shoal.heartbeat), one for another queue, and a stale worker.
    await conn.execute("SELECT shoal.heartbeat('fresh-1', 'lw', 'h', 1)")
    await conn.execute("SELECT shoal.heartbeat('other-1', 'other', 'h', 2)")
    await conn.execute("INSERT INTO shoal.workers (id, queue, heartbeat_at) VALUES ('stale-1', 'lw', $1)",
                       await ago(conn, LIVE_WORKER_SECONDS + 60))
    assert (await measure(pool, "lw", POLICY)).live_workers == 1
    await conn.execute("SELECT shoal.heartbeat('fresh-2', 'lw', 'h', 3)")
    assert (await measure(pool, "lw", POLICY)).live_workers == 2


async def test_throughput_from_heartbeats(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    """One more query per tick: the live workers' runs/s and mean run time between their last two
    beats (shoal.queue_throughput), which the decision smooths into a replica's speed."""
    await queues.declare_queue(conn, "tp")
    m = await measure(pool, "tp", POLICY)
    assert (m.reporting, m.runs_per_second, m.seconds_per_run) == (0, 0.0, None)
    # Beats the way workers beat: running totals of handler runs and their seconds.
    await conn.execute("SELECT shoal.heartbeat('w-1', 'tp', 'h', 1, 0, 0)")
    await conn.execute("SELECT shoal.heartbeat('w-2', 'tp', 'h', 2, 0, 0)")
    # Beaten twice, ~0.3 s apart: 30 runs of 0.05 s and 10 runs of 0.25 s.
    await conn.execute("UPDATE shoal.workers SET heartbeat_at = heartbeat_at - interval '0.3 s' WHERE queue = 'tp'")
    await conn.execute("SELECT shoal.heartbeat('w-1', 'tp', 'h', 1, 30, 1.5)")
    await conn.execute("SELECT shoal.heartbeat('w-2', 'tp', 'h', 2, 10, 2.5)")
    m = await measure(pool, "tp", POLICY)
    assert m.reporting == 2
    assert 40 / 0.6 < m.runs_per_second < 40 / 0.25
    assert m.seconds_per_run == pytest.approx(4.0 / 40)


async def test_measure_counts_up_to_the_cap_it_is_given(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await queues.declare_queue(conn, "big")
    await client.enqueue_many(conn, [client.NewJob("big", "t") for _ in range(300)])
    default = await measure(pool, "big", POLICY)  # 4 replicas × 10 + 1
    assert (default.ready, default.ready_capped) == (41, True)
    wide = await measure(pool, "big", POLICY, cap=1000)
    assert (wide.ready, wide.ready_capped) == (300, False)
