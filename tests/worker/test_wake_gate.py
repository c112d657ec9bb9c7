"""Enqueues notify only when someone waits for the queue's jobs (sql/015_waiter_locks.sql,
Claimer._ready_to_sleep, the autoscaler's EnqueueWakeups).

A NOTIFY makes its transaction's commit wait on one database-wide lock, so enqueues that notify
commit one at a time. These tests pin down who is notified, the barrier that keeps a worker from
sleeping on a job whose producer tested before the worker took its waiter lock, and that a real
worker, polling only every 30 s, still picks up a job at once when idle and stops costing
producers a NOTIFY while it works through a backlog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from helpers import eventually, spawn_worker
from shoal import client, queries, queues
from shoal.client import NewJob


async def _listening(db_url: str) -> tuple[asyncpg.Connection, list[str]]:
    listener = await asyncpg.connect(db_url)
    heard: list[str] = []
    await listener.add_listener("shoal_jobs", lambda _c, _pid, _channel, payload: heard.append(payload))
    return listener, heard


async def _heard_after_enqueue(conn: asyncpg.Connection, heard: list[str], queue: str) -> bool:
    """Enqueue one job (committed on return) and say whether a notification for `queue` came.
    A notification is sent at commit; 0.3 s is ample for it to arrive on a local connection."""
    heard.clear()
    await client.enqueue(conn, queue, "shoal.noop")
    await asyncio.sleep(0.3)
    return queue in heard


async def test_only_queues_someone_waits_for_are_notified(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "g")
    listener, heard = await _listening(db_url)
    waiter = await asyncpg.connect(db_url)
    other = await asyncpg.connect(db_url)
    try:
        assert not await _heard_after_enqueue(conn, heard, "g"), "nobody waits: nobody to wake"
        await other.fetchval(queries.WAIT_FOR_JOBS, "other")
        assert not await _heard_after_enqueue(conn, heard, "g"), "a waiter for another queue does not count"
        await waiter.fetchval(queries.WAIT_FOR_JOBS, "g")
        assert await _heard_after_enqueue(conn, heard, "g"), "a waiting worker is woken"
        heard.clear()
        await client.enqueue_many(conn, [NewJob("g", "t") for _ in range(3)])  # shoal.enqueue_many
        await eventually(lambda: asyncio.sleep(0, "g" in heard), timeout=5)
        heard.clear()
        await client.enqueue_many(conn, [NewJob("g", "t") for _ in range(client.COPY_MIN_BATCH)])  # the COPY path
        await eventually(lambda: asyncio.sleep(0, "g" in heard), timeout=5)
        async with conn.transaction(isolation="repeatable_read"):  # no snapshot in the test: same rule
            await client.enqueue(conn, "g", "t")
        await eventually(lambda: asyncio.sleep(0, "g" in heard), timeout=5)
        assert await waiter.fetchval(queries.STOP_WAITING, "g") is True
        assert not await _heard_after_enqueue(conn, heard, "g"), "a worker with a backlog is not woken"
        await waiter.fetchval(queries.WAIT_FOR_JOBS, "g")
        await waiter.close()  # a waiter that dies stops costing notifications with its session
        assert not await _heard_after_enqueue(conn, heard, "g")
    finally:
        for c in (listener, waiter, other):
            await c.close()


async def _barrier(conn: asyncpg.Connection, since: str) -> bool:
    return bool(await conn.fetchval(queries.WAKE_BARRIER, since))


async def test_the_barrier_holds_until_producers_that_missed_the_lock_commit(db_url: str,
                                                                           conn: asyncpg.Connection) -> None:
    """Each enqueue path tests for a waiter inside a transaction that is still open when the
    worker takes its lock: the barrier must not pass until it commits, or the worker's last look
    at the queue misses that job and it sleeps on it."""
    await queues.declare_queue(conn, "b")
    waiter = await asyncpg.connect(db_url)
    producer = await asyncpg.connect(db_url)
    paths = {
        "one job (ENQUEUE_ONE)": lambda: client.enqueue(producer, "b", "t"),
        "shoal.enqueue_many": lambda: client.enqueue_many(producer, [NewJob("b", "t"), NewJob("b", "t")]),
        "the COPY path": lambda: client.enqueue_many(producer, [NewJob("b", "t")] * client.COPY_MIN_BATCH),
        "plain SQL": lambda: producer.fetchval("SELECT shoal.enqueue('b', 't')"),
    }
    try:
        for path, enqueue in paths.items():
            before = await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'b'")
            tx = producer.transaction()
            await tx.start()
            await enqueue()  # nobody waits yet: it sends no notification
            since = await waiter.fetchval(queries.WAIT_FOR_JOBS, "b")
            assert not await _barrier(conn, since), f"{path}: its producer is still uncommitted"
            await tx.commit()
            assert await _barrier(conn, since), path
            # Now the worker's last look sees that producer's job.
            assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'b'") > before, path
            await waiter.fetchval(queries.STOP_WAITING, "b")
        since = await waiter.fetchval(queries.WAIT_FOR_JOBS, "b")
        assert await _barrier(conn, since), "nothing open: the barrier passes at once"
    finally:
        for c in (waiter, producer):
            await c.close()


async def _waiter_lock_held(conn: asyncpg.Connection, queue: str = "idle") -> bool:
    return bool(await conn.fetchval(
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted "
        "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = shoal.waiter_key($1)", queue))


async def _waiter_lock_free(conn: asyncpg.Connection) -> bool:
    return not await _waiter_lock_held(conn)


async def test_an_idle_worker_is_notified_and_a_busy_one_costs_no_notify(db_url: str, conn: asyncpg.Connection,
                                                                        tmp_path: Path) -> None:
    await queues.declare_queue(conn, "idle", keep_succeeded_seconds=3600)
    # Polling every 30 s, the worker picks a job up within seconds only through a notification.
    proc = spawn_worker(db_url, "idle", "--concurrency", "2", "--poll-interval", "30",
                        log_path=tmp_path / "w.log")
    listener, heard = await _listening(db_url)
    try:
        await eventually(lambda: _waiter_lock_held(conn), timeout=30)
        job = await client.enqueue(conn, "idle", "shoal.noop")
        await eventually(lambda: conn.fetchval("SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job),
                         timeout=10)
        # A backlog: 2 slots, 6 jobs of 1.5 s. The full claim lets the waiter lock go.
        slow = await client.enqueue_many(conn, [NewJob("idle", "shoal.sleep", {"seconds": 1.5}) for _ in range(6)])
        await eventually(lambda: _waiter_lock_free(conn), timeout=10)
        assert not await _heard_after_enqueue(conn, heard, "idle"), "enqueues during a backlog send no NOTIFY"
        # Drained, idle again: waiting, and notified.
        await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM shoal.jobs WHERE id = ANY($1::bigint[]) "
                                               "AND state <> 'succeeded'", slow), timeout=60)
        await eventually(lambda: _waiter_lock_held(conn), timeout=30)
        assert await _heard_after_enqueue(conn, heard, "idle")
    finally:
        proc.terminate()
        proc.wait(20)
        await listener.close()
    assert proc.returncode == 0, (tmp_path / "w.log").read_text()[-2000:]


async def test_a_long_transaction_elsewhere_does_not_delay_an_idle_worker(db_url: str, conn: asyncpg.Connection,
                                                                         tmp_path: Path) -> None:
    """A transaction that stays open keeps an idle worker's barrier from passing (it might be a
    producer that missed the lock), so the worker keeps looking every 10-250 ms instead of
    sleeping; its waiter lock is held all the while, so an enqueue still wakes it at once, and
    once the transaction ends it sleeps on notifications again."""
    await queues.declare_queue(conn, "open", keep_succeeded_seconds=3600)
    other = await asyncpg.connect(db_url)
    tx = other.transaction()
    await tx.start()
    await other.fetchval("SELECT pg_current_xact_id()")  # a writer, open before the worker starts
    proc = spawn_worker(db_url, "open", "--concurrency", "2", "--poll-interval", "30", log_path=tmp_path / "w.log")
    try:
        await eventually(lambda: _waiter_lock_held(conn, "open"), timeout=30)
        for _ in range(3):
            job = await client.enqueue(conn, "open", "shoal.noop")
            await eventually(lambda job=job: conn.fetchval(
                "SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job), timeout=10)
        await tx.rollback()
        job = await client.enqueue(conn, "open", "shoal.noop")
        await eventually(lambda: conn.fetchval("SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job),
                         timeout=10)
    finally:
        proc.terminate()
        proc.wait(20)
        await other.close()
    assert proc.returncode == 0, (tmp_path / "w.log").read_text()[-2000:]
