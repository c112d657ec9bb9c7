"""The local backend (`shoal up`): the autoscaler drives real `shoal worker` processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import asyncpg
import pytest

from helpers import TESTS_DIR, eventually
from shoal import client, queues
from shoal.client import NewJob
from shoal.scaler.decision import Policy
from shoal.scaler.local import LocalWorkers
from shoal.scaler.loop import Autoscaler, EnqueueWakeups, create_measure_pool

FAST = ["--heartbeat-interval", "0.5", "--stale-after", "3", "--poll-interval", "0.2"]


async def succeeded(conn: asyncpg.Connection, n: int) -> bool:
    return await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE state = 'succeeded'") >= n


async def start(db_url: str, queue: str, policy: Policy, tmp_path: Path):  # type: ignore[no-untyped-def]
    os.environ["PYTHONPATH"] = str(TESTS_DIR)
    pool = await create_measure_pool(db_url)
    workers = LocalWorkers(db_url, queue, concurrency=policy.concurrency, tasks=["worker_tasks"],
                           extra_args=FAST, log_dir=str(tmp_path))
    wakeups = EnqueueWakeups(db_url)
    scaler = Autoscaler(queue=queue, pool=pool, target=workers, policy=lambda: policy, interval=0.3,
                        wakeups=wakeups)
    stop = asyncio.Event()
    task = asyncio.create_task(scaler.run(stop))

    async def close() -> None:
        stop.set()
        await task
        await workers.shutdown()
        await wakeups.close()
        await pool.close()

    return workers, close


@pytest.mark.slow
async def test_burst_is_drained_by_several_processes_then_scaled_back(db_url: str, conn: asyncpg.Connection,
                                                                      tmp_path: Path) -> None:
    await queues.declare_queue(conn, "burst", keep_succeeded_seconds=3600)
    policy = Policy(min_replicas=1, max_replicas=3, concurrency=5, scale_down_delay=1.5)
    workers, close = await start(db_url, "burst", policy, tmp_path)
    try:
        await eventually(lambda: asyncio.sleep(0, len(workers.procs) == 1), timeout=10)
        n = 600
        await client.enqueue_many(conn, [NewJob("burst", "test.sleep_ms", {"ms": 30}) for _ in range(n)])
        await eventually(lambda: asyncio.sleep(0, len(workers.procs) == 3), timeout=10)
        await eventually(lambda: succeeded(conn, n), timeout=90, interval=0.3)
        ran_on = await conn.fetchval("SELECT count(DISTINCT worker_id) FROM shoal.jobs")
        assert ran_on >= 2, "the burst was shared by more than one worker process"
        await eventually(lambda: asyncio.sleep(0, len(workers.procs) == 1), timeout=20)
    finally:
        await close()


@pytest.mark.slow
async def test_killed_worker_is_replaced_and_no_job_lost(db_url: str, conn: asyncpg.Connection,
                                                         tmp_path: Path) -> None:
    await queues.declare_queue(conn, "kill", keep_succeeded_seconds=3600)
    policy = Policy(min_replicas=2, max_replicas=2, concurrency=10, scale_down_delay=1)
    workers, close = await start(db_url, "kill", policy, tmp_path)
    try:
        await eventually(lambda: asyncio.sleep(0, len(workers.procs) == 2), timeout=10)
        n = 1000
        await client.enqueue_many(conn, [NewJob("kill", "test.sleep_ms", {"ms": 40}) for _ in range(n)])
        await eventually(lambda: succeeded(conn, 100), timeout=30)
        victim = workers.procs[0].pid
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: asyncio.sleep(0, workers.replaced >= 1 and victim not in workers.pids
                                               and len(workers.procs) == 2), timeout=15)
        await eventually(lambda: succeeded(conn, n), timeout=90, interval=0.3)
        assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == n
    finally:
        await close()
