"""The local backend (`shoal up`): the autoscaler drives real `shoal worker` processes.

The loop under test is the one `shoal up` builds (`shoal.scaler.local.local_autoscaler`, with
`shoal.scaler.cli.up_policy` for its flags): the shared `Autoscaler`, real PostgreSQL, real
worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import cast

import asyncpg
import pytest

from helpers import TESTS_DIR, eventually
from shoal import client, queues
from shoal.client import NewJob
from shoal.errors import ValidationError
from shoal.scaler.cli import up_policy
from shoal.scaler.decision import Policy
from shoal.scaler.local import LocalWorkers, local_autoscaler
from shoal.scaler.loop import EnqueueWakeups, FixedSource, TickReport, create_measure_pool

FAST = ["--heartbeat-interval", "0.5", "--stale-after", "3", "--poll-interval", "0.2"]


async def succeeded(conn: asyncpg.Connection, n: int) -> bool:
    return await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE state = 'succeeded'") >= n


def flags(min_workers: int, max_workers: int, concurrency: int, scale_down_delay: float) -> Policy:
    """The policy `shoal up` builds from these flags."""
    return up_policy(argparse.Namespace(min_workers=min_workers, max_workers=max_workers, concurrency=concurrency,
                                        scale_down_delay=scale_down_delay))


async def start(db_url: str, queue: str, policy: Policy, tmp_path: Path,  # type: ignore[no-untyped-def]
                interval: float = 0.3):
    """`shoal up`'s loop and workers for `queue`, running; returns (workers, scaler, close)."""
    os.environ["PYTHONPATH"] = str(TESTS_DIR)
    pool = await create_measure_pool(db_url)
    workers = LocalWorkers(db_url, queue, concurrency=policy.concurrency, tasks=["worker_tasks"],
                           extra_args=FAST, log_dir=str(tmp_path))
    wakeups = EnqueueWakeups(db_url)
    scaler = local_autoscaler(workers, pool, policy, interval=interval, wakeups=wakeups)
    stop = asyncio.Event()
    task = asyncio.create_task(scaler.run(stop))

    async def close() -> None:
        stop.set()
        await task
        await workers.shutdown()
        await wakeups.close()
        await pool.close()

    return workers, scaler, close


def test_up_flags_errors_name_the_flag() -> None:
    with pytest.raises(ValidationError) as err:
        flags(5, 4, 10, 5.0)
    assert str(err.value) == "--min-workers: must be <= --max-workers (4); lower it or raise --max-workers"
    with pytest.raises(ValidationError, match=r"^--min-workers: must be >= 0"):
        flags(-1, 4, 10, 5.0)
    with pytest.raises(ValidationError, match=r"^--scale-down-delay: "):
        flags(0, 4, 10, -1.0)
    assert flags(0, 4, 10, 5.0).scale_to_zero and not flags(1, 4, 10, 5.0).scale_to_zero


def test_up_drain_within_flag() -> None:
    """`shoal up --drain-within SECONDS`: the drain-time objective (absent: none)."""
    from shoal.cli import build_parser

    parser = build_parser()
    assert up_policy(parser.parse_args(["up", "--drain-within", "30"])).drain_within == 30.0
    assert up_policy(parser.parse_args(["up"])).drain_within is None
    base = {"min_workers": 1, "max_workers": 4, "concurrency": 10, "scale_down_delay": 5.0}
    assert up_policy(argparse.Namespace(**base, drain_within=120.0)).drain_within == 120.0
    with pytest.raises(ValidationError, match=r"^--drain-within: must be a number of seconds >= 1"):
        up_policy(argparse.Namespace(**base, drain_within=0.5))


@pytest.mark.slow
async def test_burst_is_drained_by_several_processes_then_scaled_back(db_url: str, conn: asyncpg.Connection,
                                                                      tmp_path: Path) -> None:
    await queues.declare_queue(conn, "burst", keep_succeeded_seconds=3600)
    workers, _, close = await start(db_url, "burst", flags(1, 3, 5, 1.5), tmp_path)
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
    # min == max: a fixed count, which `shoal up` applies (nobody else owns its processes).
    workers, _, close = await start(db_url, "kill", flags(2, 2, 10, 1.0), tmp_path)
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


@pytest.mark.slow
async def test_up_never_scales_a_paused_queue_up(db_url: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    """README: a paused queue never scales up. `shoal up`'s loop reads the pause from the queue's
    row, where `shoal queue pause` writes it and the workers read it; resuming wakes it at once."""
    await queues.declare_queue(conn, "held", keep_succeeded_seconds=3600)
    await queues.set_paused(conn, "held", True)
    workers, scaler, close = await start(db_url, "held", flags(0, 3, 5, 1.0), tmp_path)
    seen: list[TickReport] = []
    scaler.on_tick = seen.append  # observe every tick; the loop itself runs unchanged
    try:
        await client.enqueue_many(conn, [NewJob("held", "test.sleep_ms", {"ms": 20}) for _ in range(100)])

        def paused_ticks() -> list[TickReport]:
            """Ticks that measured, while paused, more backlog than 3 workers could take (the count
            stops there: 3 workers x 5 jobs + 1)."""
            return [t for t in seen if t.measurement.paused and t.measurement.ready_capped]

        await eventually(lambda: asyncio.sleep(0, len(paused_ticks()) >= 5), timeout=30)
        assert all(t.decision.desired == 0 and not t.scaled for t in paused_ticks()), paused_ticks()
        assert "(queue paused: 16 ready not counted)" in paused_ticks()[-1].decision.reason
        assert workers.procs == [] and workers.replaced == 0

        await queues.set_paused(conn, "held", False)  # as `shoal queue resume held` does
        await eventually(lambda: asyncio.sleep(0, len(workers.procs) == 3), timeout=30)
        await eventually(lambda: succeeded(conn, 100), timeout=60, interval=0.3)
        assert not any(t.scaled and t.decision.direction == "up" for t in seen if t.measurement.paused)
    finally:
        await close()


@pytest.mark.slow
async def test_a_queue_at_zero_scales_up_on_its_first_job_at_once(db_url: str, conn: asyncpg.Connection,
                                                                  tmp_path: Path) -> None:
    """The loop here ticks every 30 s unless woken. While its last reading found no ready job, its
    listener holds the queue's waiter lock (sql/015_waiter_locks.sql), so the first enqueue
    notifies it and a worker runs the job within seconds; once jobs are ready it lets go."""
    await queues.declare_queue(conn, "first", keep_succeeded_seconds=3600)
    workers, scaler, close = await start(db_url, "first", flags(0, 2, 5, 30.0), tmp_path, interval=30)
    wakeups = cast(FixedSource, scaler.source).wakeups
    assert wakeups is not None
    seen: list[tuple[TickReport, bool]] = []  # each tick, and whether the lock was held after it
    scaler.on_tick = lambda report: seen.append((report, "first" in wakeups.waiting))
    try:
        await eventually(lambda: asyncio.sleep(0, bool(seen) and seen[-1][1]), timeout=30)
        ticks = len(seen)
        job = await client.enqueue(conn, "first", "test.sleep_ms", {"ms": 1})
        await eventually(lambda: conn.fetchval("SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job),
                         timeout=20)
        woken, held = seen[ticks]
        assert woken.measurement.ready == 1 and woken.decision.desired == 1, woken.decision.reason
        assert not held, "a tick that saw a ready job lets the lock go"
    finally:
        await close()


@pytest.mark.slow
async def test_a_job_whose_enqueue_raced_the_lock_is_read_once_it_commits(db_url: str, conn: asyncpg.Connection,
                                                                          tmp_path: Path) -> None:
    """An enqueue that tested the waiter lock before the loop took it found no waiter and sent no
    notification; the loop read no ready job (not yet committed). Once that transaction ends the
    listener ticks the loop again (scaler/wakeups.py), so the job runs within seconds, not at the
    next 30 s poll."""
    await queues.declare_queue(conn, "raced", keep_succeeded_seconds=3600)
    producer = await asyncpg.connect(db_url)
    transaction = producer.transaction()
    await transaction.start()
    close = None
    try:
        job = await client.enqueue(producer, "raced", "test.sleep_ms", {"ms": 1})  # nobody waits yet
        _, scaler, close = await start(db_url, "raced", flags(0, 2, 5, 30.0), tmp_path, interval=30)
        wakeups = cast(FixedSource, scaler.source).wakeups
        assert wakeups is not None
        seen: list[TickReport] = []
        scaler.on_tick = seen.append
        await eventually(lambda: asyncio.sleep(0, bool(seen) and "raced" in wakeups.waiting), timeout=30)
        assert seen[-1].measurement.ready == 0
        ticks = len(seen)
        await asyncio.sleep(0.5)  # the look after the lock waits for this transaction
        assert len(seen) == ticks
        await transaction.commit()
        await eventually(lambda: conn.fetchval("SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job),
                         timeout=20)
        assert seen[ticks].measurement.ready == 1
    finally:
        if close is not None:
            await close()
        await producer.close()
