"""Enqueues notify only workers that wait for jobs (sql/011_wake_gate.sql, Claimer._ready_to_sleep).

A NOTIFY makes its transaction's commit wait on one database-wide lock, so enqueues that notify
commit one at a time. These tests pin down who is notified, the barrier that keeps a worker from
sleeping on a job whose producer missed its `waiting`, and that a real worker, polling only
every 30 s, still picks up a job at once when idle and stops costing producers a NOTIFY while it
works through a backlog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from helpers import eventually, spawn_worker
from shoal import client, queues
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


async def test_only_queues_with_a_waiting_worker_or_no_pending_job_are_notified(db_url: str,
                                                                                 conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "g")
    listener, heard = await _listening(db_url)
    try:
        assert await _heard_after_enqueue(conn, heard, "g"), "a queue's first pending job ticks the autoscaler"
        assert not await _heard_after_enqueue(conn, heard, "g"), "no worker, jobs pending: nobody to wake"
        await conn.execute("SELECT shoal.heartbeat('w1', 'g', 'host', 1, 0, 0)")
        assert await _heard_after_enqueue(conn, heard, "g"), "a worker that has not said (an older release) is woken"
        await conn.execute("SELECT shoal.worker_waiting('w1', false)")
        assert not await _heard_after_enqueue(conn, heard, "g"), "a worker with a backlog is not"
        await conn.execute("SELECT shoal.heartbeat('w2', 'other', 'host', 2, 0, 0)")
        assert not await _heard_after_enqueue(conn, heard, "g"), "a worker of another queue does not count"
        await conn.execute("SELECT shoal.worker_waiting('w1', true)")
        assert await _heard_after_enqueue(conn, heard, "g"), "a waiting worker is woken"
        heard.clear()
        await client.enqueue_many(conn, [NewJob("g", "t") for _ in range(client.COPY_MIN_BATCH)])  # the COPY path
        await eventually(lambda: asyncio.sleep(0, "g" in heard), timeout=5)
    finally:
        await listener.close()


async def test_the_barrier_holds_until_producers_that_missed_waiting_commit(db_url: str,
                                                                            conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "b")
    await client.enqueue(conn, "b", "t")  # a pending job: only a waiting worker makes an enqueue notify
    await conn.execute("SELECT shoal.heartbeat('w1', 'b', 'host', 1, 0, 0)")
    await conn.execute("SELECT shoal.worker_waiting('w1', false)")
    producer = await asyncpg.connect(db_url)
    try:
        tx = producer.transaction()
        await tx.start()
        await client.enqueue(producer, "b", "t")  # read `waiting` (false): no notification will come
        await conn.execute("SELECT shoal.worker_waiting('w1', true)")
        assert await conn.fetchval("SELECT shoal.wake_barrier('b')") is False, \
            "a producer that read `waiting` before it changed is still uncommitted"
        assert await conn.fetchval("SELECT shoal.wake_barrier('other')") is True, "other queues are not held"
        await tx.commit()
        assert await conn.fetchval("SELECT shoal.wake_barrier('b')") is True
        # Now the worker's last look sees that producer's job.
        assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'b' AND state = 'pending'") == 2
    finally:
        await producer.close()


async def test_a_producer_reads_waiting_after_its_lock_not_at_its_statement_start(
        db_url: str, conn: asyncpg.Connection) -> None:
    """The single-job statement (queries.ENQUEUE_ONE) takes its snapshot before it waits for the
    wake lock; a worker that set `waiting` meanwhile must still be notified, or it could pass its
    barrier, look at the queue before this job commits, and sleep on it."""
    await queues.declare_queue(conn, "s")
    await client.enqueue(conn, "s", "t")  # a pending job: only a waiting worker makes an enqueue notify
    await conn.execute("SELECT shoal.heartbeat('w1', 's', 'host', 1, 0, 0)")
    await conn.execute("SELECT shoal.worker_waiting('w1', false)")
    listener, heard = await _listening(db_url)
    holder = await asyncpg.connect(db_url)
    producer = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(shoal.wake_key('s'))")  # as a barrier test holds it
        heard.clear()
        enqueue = asyncio.ensure_future(client.enqueue(producer, "s", "t"))
        await eventually(lambda: holder.fetchval(
            "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"), timeout=5)
        await conn.execute("SELECT shoal.worker_waiting('w1', true)")  # committed while the producer waits
        await holder.execute("SELECT pg_advisory_unlock(shoal.wake_key('s'))")
        await enqueue
        await eventually(lambda: asyncio.sleep(0, "s" in heard), timeout=5)
    finally:
        for c in (listener, holder, producer):
            await c.close()


async def test_an_enqueue_in_a_repeatable_read_transaction_always_notifies(
        db_url: str, conn: asyncpg.Connection) -> None:
    """Its snapshot dates from the transaction's first statement, perhaps from before a worker
    said it waits: the wake test cannot trust it."""
    await queues.declare_queue(conn, "rr")
    await client.enqueue(conn, "rr", "t")  # a pending job, and no waiting worker: no reason to notify
    listener, heard = await _listening(db_url)
    producer = await asyncpg.connect(db_url)
    try:
        heard.clear()
        async with producer.transaction(isolation="repeatable_read"):
            await producer.fetchval("SELECT count(*) FROM shoal.workers")  # the snapshot is taken here
            await client.enqueue(producer, "rr", "t")
        await eventually(lambda: asyncio.sleep(0, "rr" in heard), timeout=5)
        assert not await _heard_after_enqueue(conn, heard, "rr"), "a read-committed enqueue still does not"
    finally:
        for c in (listener, producer):
            await c.close()


async def _waiting(conn: asyncpg.Connection, queue: str) -> bool | None:
    return await conn.fetchval("SELECT bool_and(waiting) FROM shoal.workers WHERE queue = $1", queue)


async def test_an_idle_worker_is_notified_and_a_busy_one_costs_no_notify(db_url: str, conn: asyncpg.Connection,
                                                                        tmp_path: Path) -> None:
    await queues.declare_queue(conn, "idle", keep_succeeded_seconds=3600)
    # A job scheduled an hour ahead keeps the queue from being empty, so that only a waiting
    # worker makes an enqueue notify; and polling every 30 s, the worker picks a job up within
    # seconds only through a notification.
    await client.enqueue(conn, "idle", "shoal.noop", delay=3600)
    proc = spawn_worker(db_url, "idle", "--concurrency", "2", "--poll-interval", "30",
                        log_path=tmp_path / "w.log")
    listener, heard = await _listening(db_url)
    try:
        await eventually(lambda: _waiting(conn, "idle"), timeout=30)
        job = await client.enqueue(conn, "idle", "shoal.noop")
        await eventually(lambda: conn.fetchval("SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job),
                         timeout=10)
        # A backlog: 2 slots, 6 jobs of 1.5 s. The full claim says `waiting` false.
        slow = await client.enqueue_many(conn, [NewJob("idle", "shoal.sleep", {"seconds": 1.5}) for _ in range(6)])
        await eventually(lambda: _is_false(conn, "idle"), timeout=10)
        assert not await _heard_after_enqueue(conn, heard, "idle"), "enqueues during a backlog send no NOTIFY"
        # Drained, idle again: waiting, and notified.
        await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM shoal.jobs WHERE id = ANY($1::bigint[]) "
                                               "AND state <> 'succeeded'", slow), timeout=60)
        await eventually(lambda: _waiting(conn, "idle"), timeout=30)
        assert await _heard_after_enqueue(conn, heard, "idle")
    finally:
        proc.terminate()
        proc.wait(20)
        await listener.close()
    assert proc.returncode == 0, (tmp_path / "w.log").read_text()[-2000:]


async def _is_false(conn: asyncpg.Connection, queue: str) -> bool:
    return await _waiting(conn, queue) is False
