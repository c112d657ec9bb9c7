"""Completions notify `shoal_done` only while a waiter is listed (sql/014_done_gate.sql), and a
waiter never misses a completion for it: it is listed and past the barrier before it reads states."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg

from helpers import eventually
from shoal import client, queues, sync
from shoal.waiting import wait

RECORD_OK = "SELECT shoal.record('w', $1, false, ARRAY[$2::bigint], '{}', '{}', '{}', '{}')"


async def running_job(conn: asyncpg.Connection, queue: str) -> int:
    """A job claimed (leased) by worker 'w', whose success the test then records."""
    job = await client.enqueue(conn, queue, "t")
    assert await conn.fetchval("SELECT id FROM shoal.claim($1, 'w', 1)", queue) == job
    return job


async def listener(db_url: str) -> tuple[asyncpg.Connection, list[str]]:
    """A session that LISTENs on shoal_done without being listed: it hears what completions send."""
    conn = await asyncpg.connect(db_url)
    heard: list[str] = []
    await conn.add_listener("shoal_done", lambda _c, _p, _ch, payload: heard.append(payload))
    return conn, heard


async def waiters(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM shoal.done_waiters")


async def test_completions_notify_only_while_a_waiter_is_listed(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "dg")
    ear, heard = await listener(db_url)
    try:
        a, b, c, d = [await running_job(conn, "dg") for _ in range(4)]
        await conn.execute(RECORD_OK, "dg", a)  # nobody listed
        listed = await conn.fetchval("SELECT shoal.wait_begin()")
        await conn.execute(RECORD_OK, "dg", b)
        await conn.execute("SELECT shoal.wait_end($1)", listed)
        await conn.execute(RECORD_OK, "dg", c)  # nobody listed again
        listed = await conn.fetchval("SELECT shoal.wait_begin()")
        await conn.execute(RECORD_OK, "dg", d)
        # Notifications arrive in commit order: once d's is heard, a's and c's would have been.
        await eventually(lambda: asyncio.sleep(0, str(d) in heard), timeout=5)
        assert heard == [str(b), str(d)]
        # In REPEATABLE READ the list would be read in an older snapshot: such a completion notifies.
        await conn.execute("SELECT shoal.wait_end($1)", listed)
        e = await running_job(conn, "dg")
        async with conn.transaction(isolation="repeatable_read"):
            await conn.execute(RECORD_OK, "dg", e)
        await eventually(lambda: asyncio.sleep(0, str(e) in heard), timeout=5)
    finally:
        await ear.close()


async def test_the_barrier_holds_until_completions_that_missed_the_waiter_commit(
        db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "db")
    job = await running_job(conn, "db")
    worker = await asyncpg.connect(db_url)
    waiter = await asyncpg.connect(db_url)
    try:
        tx = worker.transaction()
        await tx.start()
        await worker.execute(RECORD_OK, "db", job)  # read the list (empty): it will not notify
        await waiter.fetchval("SELECT shoal.wait_begin()")
        barrier = asyncio.create_task(waiter.execute("SELECT shoal.done_barrier()"))
        await eventually(lambda: conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = $1)",
            waiter.get_server_pid()), timeout=5)
        assert not barrier.done(), "the waiter would read states before that completion committed"
        await tx.commit()
        await asyncio.wait_for(barrier, 5)
        assert await conn.fetchval("SELECT state::text FROM shoal.jobs WHERE id = $1", job) is None  # recorded
    finally:
        await worker.close()
        await waiter.close()


async def test_wait_is_woken_by_the_completion_not_its_poll(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "dw")
    job = await running_job(conn, "dw")
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        waiting = asyncio.create_task(wait(pool, [job], timeout=10, poll_interval=60))
        await eventually(lambda: waiters(conn), timeout=5)
        await conn.execute(RECORD_OK, "dw", job)
        assert (await asyncio.wait_for(waiting, 8))[job].state == "succeeded"
        assert await waiters(conn) == 0, "a waiter that is done is unlisted"

        job = await running_job(conn, "dw")
        with psycopg.connect(db_url, autocommit=True) as pg:
            done = asyncio.create_task(asyncio.to_thread(sync.wait, pg, [job], timeout=10, poll_interval=60))
            await eventually(lambda: waiters(conn), timeout=5)
            await conn.execute(RECORD_OK, "dw", job)
            results: dict[int, Any] = await asyncio.wait_for(done, 8)
        assert results[job].state == "succeeded"
        assert await waiters(conn) == 0
    finally:
        await pool.close()


async def test_waiters_whose_session_ended_are_unlisted_by_prune(db_url: str, conn: asyncpg.Connection) -> None:
    gone = await asyncpg.connect(db_url)
    await gone.fetchval("SELECT shoal.wait_begin()")
    await gone.close()  # without wait_end: a killed client
    live = await conn.fetchval("SELECT shoal.wait_begin()")
    await eventually(lambda: _pruned_to(conn, 1), timeout=10)
    assert await conn.fetchval("SELECT id FROM shoal.done_waiters") == live


async def _pruned_to(conn: asyncpg.Connection, n: int) -> bool:
    await conn.execute("SELECT shoal.prune()")
    return await waiters(conn) == n
