"""Throughput from heartbeats (sql/010_worker_throughput.sql): each beat carries the worker's handler
runs and their seconds, so `shoal.queue_throughput` gives a queue's recent runs per second and mean
run time from one row per live worker, with deleted succeeded jobs counted too (nothing per job is
written for it). The console's overview shows it."""

from __future__ import annotations

import asyncio

import asyncpg

from helpers import eventually, running_worker
from shoal import client, queues
from shoal.client import NewJob
from shoal.tasks import Job, TaskRegistry, task

THROUGHPUT = "SELECT reporting, runs_per_second, seconds_per_run FROM shoal.queue_throughput($1, $2)"


def sleepy_registry() -> TaskRegistry:
    registry = TaskRegistry()

    @task("nap", registry=registry)
    async def nap(job: Job) -> None:
        await asyncio.sleep(0.02)

    return registry


async def test_heartbeats_report_runs_per_second_and_seconds_per_run(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "tp")
    before = await conn.fetchrow(THROUGHPUT, "tp", 30.0)
    assert (before["reporting"], before["runs_per_second"], before["seconds_per_run"]) == (0, 0.0, None)
    ids = await client.enqueue_many(conn, [NewJob("tp", "nap") for _ in range(400)])
    async with running_worker(db_url, "tp", sleepy_registry(), concurrency=4, heartbeat_interval=0.3,
                              held_claims=False):

        async def measured() -> asyncpg.Record | None:
            row = await conn.fetchrow(THROUGHPUT, "tp", 30.0)
            return row if row["reporting"] == 1 and row["runs_per_second"] > 0 else None

        row = await eventually(measured, timeout=20, interval=0.1)
        await client.wait(conn, ids, mode="all", timeout=60)
    # 4 runners of 20 ms jobs: at most 200 runs/s (a beat's interval is measured by the server, so
    # allow a little), and each run took at least its 20 ms (plus scheduling, more on a loaded machine).
    assert 0 < row["runs_per_second"] <= 220, row
    assert 0.019 <= row["seconds_per_run"] < 0.5, row
    # Succeeded jobs are deleted at once (keep_succeeded 0), yet every run was reported.
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'tp'") == 0


async def test_an_idle_worker_reports_zero_and_a_dead_one_nothing(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "idle")
    async with running_worker(db_url, "idle", sleepy_registry(), heartbeat_interval=0.3):

        async def reporting() -> bool:
            row = await conn.fetchrow(THROUGHPUT, "idle", 30.0)
            return row["reporting"] == 1

        await eventually(reporting, timeout=10, interval=0.1)
        row = await conn.fetchrow(THROUGHPUT, "idle", 30.0)
        assert (row["runs_per_second"], row["seconds_per_run"]) == (0.0, None)
    # A worker whose last beat is older than the live window (killed, not yet rescued) is not counted.
    await conn.execute("INSERT INTO shoal.workers (id, queue, heartbeat_at, prev_heartbeat_at, runs) "
                       "VALUES ('gone-1-abc', 'idle', now() - interval '1 minute', now() - interval '2 minutes', 100)")
    row = await conn.fetchrow(THROUGHPUT, "idle", 30.0)
    assert row["reporting"] == 0

