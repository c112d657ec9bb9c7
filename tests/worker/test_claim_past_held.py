"""Held claims pass over rows other batches hold without trying to lock them
(sql/013_claim_past_held.sql), and no ready job is left behind by that: rows freed while an older
transaction runs are claimed by the full scan one claim of the queue makes each second, or at once
when nothing else is ready, and by every claim once that transaction ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from helpers import eventually
from shoal import client, queries, queues
from shoal.client import NewJob
from shoal.worker import holder as holder_module
from shoal.worker.completer import Completer
from shoal.worker.config import WorkerConfig
from shoal.worker.holder import Holder, prepare_statements
from shoal.worker.state import Shared

# claim_held's last argument: seconds between the queue's full scans (0: this claim scans fully).
QUICK, FULL = 3600.0, 0.0


class Sessions:
    """Connections that each play one worker's held batch (or another client); closed at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[asyncpg.Connection] = []

    async def open(self) -> asyncpg.Connection:
        c = await asyncpg.connect(self.url)
        self.opened.append(c)
        return c


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    s = Sessions(db_url)
    yield s
    for c in s.opened:
        await c.close()


async def claim(conn: asyncpg.Connection, queue: str, limit: int, full_every: float) -> list[int]:
    """A held claim in a transaction left open, as a worker's batch is while its jobs run."""
    if not conn.is_in_transaction():
        await conn.execute("BEGIN")
    return [r["id"] for r in await conn.fetch(queries.CLAIM_HELD, queue, limit, full_every)]


async def scanned_fully_just_now(conn: asyncpg.Connection, queue: str) -> None:
    """As if a claim of `queue` had just been elected for its full scan: QUICK claims stay quick."""
    await conn.execute("INSERT INTO shoal.full_scans (queue, at) VALUES ($1, now())", queue)


async def freed_while_an_older_transaction_runs(conn: asyncpg.Connection, sessions: Sessions, queue: str,
                                                n: int) -> tuple[asyncpg.Connection, list[int]]:
    """An older transaction (holding the database's xmin back), then a batch that locks the first
    `n` ready jobs and commits without touching them: a stopping worker's unstarted jobs."""
    old = await sessions.open()
    await old.execute("BEGIN")
    await old.fetchval("SELECT pg_current_xact_id()")
    releaser = await sessions.open()
    released = await claim(releaser, queue, n, FULL)
    await releaser.execute("COMMIT")
    return old, released


async def test_a_quick_claim_takes_the_rows_after_those_other_batches_hold(
        conn: asyncpg.Connection, sessions: Sessions) -> None:
    await queues.declare_queue(conn, "ph")
    ids = await client.enqueue_many(conn, [NewJob("ph", "shoal.noop") for _ in range(10)])
    first, second = await sessions.open(), await sessions.open()
    assert await claim(first, "ph", 4, QUICK) == ids[:4]
    assert await claim(second, "ph", 4, QUICK) == ids[4:8]
    await first.execute("ROLLBACK")  # a batch lost with its connection: its jobs are anyone's again
    await eventually(lambda: _claims(sessions, "ph", ids[:4] + ids[8:]))


async def _claims(sessions: Sessions, queue: str, expected: list[int]) -> bool:
    conn = await sessions.open()
    try:
        return await claim(conn, queue, 10, QUICK) == expected
    finally:
        await conn.close()


async def test_rows_freed_while_an_older_transaction_runs_are_claimed_by_a_full_scan(
        conn: asyncpg.Connection, sessions: Sessions) -> None:
    await queues.declare_queue(conn, "pf")
    await scanned_fully_just_now(conn, "pf")
    ids = await client.enqueue_many(conn, [NewJob("pf", "shoal.noop") for _ in range(6)])
    old, released = await freed_while_an_older_transaction_runs(conn, sessions, "pf", 2)
    assert released == ids[:2]
    quick = await sessions.open()
    assert await claim(quick, "pf", 2, QUICK) == ids[2:4], "the quick claim tried the freed rows"
    full = await sessions.open()
    assert await claim(full, "pf", 2, FULL) == ids[:2], "the full scan takes the freed rows, first in order"
    await full.execute("COMMIT")  # freed again
    await quick.execute("COMMIT")  # and these too: ids[:4] are all freed while `old` runs
    busy = await sessions.open()
    assert await claim(busy, "pf", 10, QUICK) == ids[4:], "only the rows never locked are quick to take"
    starved = await sessions.open()
    assert await claim(starved, "pf", 10, QUICK) == ids[:4], "with nothing else ready a quick claim scans fully"
    await starved.execute("ROLLBACK")
    await busy.execute("ROLLBACK")
    await old.execute("COMMIT")
    # No older transaction is left: every freed row is quick to take again, in the queue's order.
    await eventually(lambda: _claims(sessions, "pf", ids))


async def test_one_claim_of_the_queue_scans_fully_each_second(db_url: str, conn: asyncpg.Connection,
                                                             sessions: Sessions) -> None:
    """A queue that always has never-locked rows ready would starve the freed ones if its workers
    only claimed quickly: the queue's first claim, and the first after each FULL_SCAN_EVERY
    seconds, whichever worker sends it, scans fully; the others pass the freed rows."""
    await queues.declare_queue(conn, "pw")
    ids = await client.enqueue_many(conn, [NewJob("pw", "shoal.noop") for _ in range(12)])
    old, released = await freed_while_an_older_transaction_runs(conn, sessions, "pw", 4)
    assert released == ids[:4]
    shared = Shared(WorkerConfig(db_url, "pw").validate())
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=8)
    held_pool = await asyncpg.create_pool(db_url, min_size=0, max_size=2, init=prepare_statements)
    holder = Holder(shared, pool, held_pool, Completer(shared, pool))
    other = await sessions.open()  # another worker's claim, at the same time
    try:
        async def opened() -> list[int]:
            rows, batch = await holder.open(2)
            assert batch is not None
            return [r["id"] for r in rows or []]

        assert await opened() == ids[0:2], "the queue's first claim scans fully"
        assert await opened() == ids[4:6], "the next claims pass the freed rows"
        assert await claim(other, "pw", 2, holder_module.FULL_SCAN_EVERY) == ids[6:8], \
            "so do another worker's, within the same second"
        # A stopping worker gives back what it never started: freed rows again, while `old` runs.
        shared.stopping.set()
        await holder.close_all(5)
        shared.stopping.clear()
        await other.execute("COMMIT")
        await asyncio.sleep(holder_module.FULL_SCAN_EVERY + 0.2)
        assert await opened() == ids[0:2], "a second later one claim scans fully, in the queue's order"
        assert await opened() == ids[8:10], "and the next is quick again"
    finally:
        shared.stopping.set()
        await holder.close_all(5)
        await held_pool.close()
        await pool.close()
        await old.execute("COMMIT")
