"""The held-batch lifecycle: open a held batch, commit it, or lose it with its connection.

A held batch (held.py, sql/004_held_claims.sql) is a claim whose jobs stay locked by the
claiming transaction while they run; its commit records their outcomes. Each closes when all
its jobs have an outcome, after `HOLD_BUDGET` seconds, or when told to (a stop, a silence).

Touches: the outcome sink (`batch_of`; on a lost batch: `lost`, the orphaned outcomes), the
job buffer (drops the unstarted jobs of a lost batch), `Shared.claimed`, `executing` (read:
which jobs started), `suspects`, `db_ok`; the completer's `account` after a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shoal import queries
from shoal.worker.completer import Completer
from shoal.worker.held import HOLD_BUDGET, HeldBatch, close_plan
from shoal.worker.known_types import id_array, share_array_codecs
from shoal.worker.outcome import outcome_columns
from shoal.worker.state import Shared

log = logging.getLogger("shoal.worker")

# Seconds between a queue's held claims that try every ready row, including those whose last locker
# ended too recently for the quick claim to tell from one still holding them. One claim of the queue
# per interval, whichever worker sends it, is elected in the database (sql/013_claim_past_held.sql).
FULL_SCAN_EVERY = 1.0


class Holder:
    def __init__(self, shared: Shared, pool: asyncpg.Pool, held_pool: asyncpg.Pool, completer: Completer) -> None:
        self.shared = shared
        self.config = shared.config
        self.pool = pool  # announcements (HOLD_BATCH), shared with the other roles
        self.held_pool = held_pool  # the batches' own connections (init: prepare_statements)
        self.completer = completer
        self.batches: dict[int, HeldBatch] = {}  # open held batches by number
        self.off_until = 0.0  # the queue has limits or is paused: leased claims only until then
        self._seq = 0
        self._closers: set[asyncio.Task[None]] = set()

    async def open(self, limit: int) -> tuple[list[Any] | None, HeldBatch | None]:
        """Lock up to `limit` jobs in a new held batch. (None, None): claim leased instead."""
        cfg = self.config
        conn = await self.held_pool.acquire()
        transaction = conn.transaction()
        try:
            await transaction.start()
            rows = await conn.fetch(queries.CLAIM_HELD, cfg.queue, limit, FULL_SCAN_EVERY)
            if not rows or rows[0]["id"] is None:
                await transaction.rollback()
                await self.held_pool.release(conn)
                if rows:  # limited or paused: the leased claim knows what to do, and when
                    self.off_until = time.monotonic() + cfg.poll_interval * 5
                    return None, None
                return [], None
            self._seq += 1
            ids = [r[0] for r in rows]  # id: by position, faster than by name
            batch = HeldBatch(self._seq, conn, transaction, datetime.now(UTC), ids)
            died = [r[0] for r in await self.pool.fetch(queries.HOLD_BATCH, cfg.worker_id, batch.no,
                                                        rows[0]["xact"], id_array(ids))]
            if died:
                # An earlier batch ended with these jobs in hand: its worker died (or lost its
                # connection). Which job was at fault is unknown, so they go back suspect, to run
                # alone (leased), where a job that kills its worker runs out of attempts.
                await conn.execute(queries.HELD_CRASHED, cfg.worker_id, batch.no, died)
                await transaction.commit()
                await self.held_pool.release(conn)
                log.warning("jobs of a held batch whose worker died go back to run alone",
                            extra={"jobs": len(died)})
                self.shared.suspects = True
                return None, None
        except BaseException:
            await self._drop_connection(conn)
            raise
        self.batches[batch.no] = batch
        closer = asyncio.create_task(self._close_later(batch))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)
        return rows, batch

    def may_hold(self) -> bool:
        """Whether this worker's claims may be held (not on a queue with limits)."""
        return self.config.held_claims and not self.shared.rate_limited

    async def warm(self) -> None:
        """Open a held batch's connection ahead of the first held claim. A new backend's first
        statements cost it several ms (catalog caches, planning); opened while the first, leased
        claim is on its way, they are off the path of a backlog's first held claim."""
        with contextlib.suppress(Exception):  # a failure here is met again, and handled, by open()
            await self.held_pool.release(await self.held_pool.acquire())

    def close_soon(self) -> None:
        """Close every open batch now (each commits from its own task)."""
        for batch in self.batches.values():
            batch.done.set()

    async def close_all(self, timeout: float) -> None:
        """Close every open batch and wait up to `timeout` for the commits."""
        self.close_soon()
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=timeout)

    async def _close_later(self, batch: HeldBatch) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.done.wait(), HOLD_BUDGET)
        await self._close(batch)

    async def _close(self, batch: HeldBatch) -> None:
        """One commit: outcomes so far recorded, unfinished jobs turned into leases (or, when
        stopping, the never-started ones unlocked). If the transaction is lost instead, every
        job of the batch is ready again in the database, so we forget them all."""
        shared, sink, cfg = self.shared, self.shared.sink, self.config
        batch.closing = True
        # Running now (a job with an outcome is not: its runner is done with it).
        started = ({job_id for job_id in batch.ids if job_id in shared.executing}
                   if len(batch.outcomes) < len(batch.ids) else set())
        plan = close_plan(batch, stopping=shared.stopping.is_set(), started=started)
        record = plan.record
        try:
            # All succeeded: the database reads their ids from the batch's announcement instead
            # of being sent them again (sql/017_finish_held_ok.sql).
            if not (plan.all_ok and await batch.conn.fetchval(queries.FINISH_HELD_OK, cfg.worker_id,
                                                              cfg.queue, batch.no)):
                await batch.conn.execute(queries.FINISH_HELD_TRACED, cfg.worker_id, cfg.queue,
                                         batch.no, batch.started_at, plan.lease_ids, *outcome_columns(record))
            await batch.transaction.commit()
        except Exception as exc:
            shared.db_ok = False
            log.warning("lost a held batch with its connection; its finished jobs are recorded once the "
                        "database answers, the others run again", extra={"error": repr(exc), "jobs": len(batch.ids)})
            sink.orphaned += [*batch.outcomes.values(), *batch.late]
            sink.orphaned_batches.append(batch.no)
            sink.ready.set()
            for job_id in batch.ids:
                sink.batch_of.pop(job_id, None)
                job = shared.claimed.pop(job_id, None)
                if job is not None and job_id in started:
                    sink.lost[job_id] = job
            shared.buffer.remove(set(batch.ids))
            shared.count_in_flight()
            await self._drop_connection(batch.conn)
            shared.slot_freed.set()
            return
        finally:
            self.batches.pop(batch.no, None)
        await self.held_pool.release(batch.conn)
        for job_id in batch.ids:
            sink.batch_of.pop(job_id, None)
        for job_id in plan.released:
            shared.claimed.pop(job_id, None)
        self.completer.account(record)
        # Leases from now on: outcomes that came in while we committed, and relayed successes.
        sink.put(plan.relay + batch.late)

    async def _drop_connection(self, conn: asyncpg.Connection) -> None:
        """Give back a connection whose transaction state is unknown: closing it ends the
        transaction, so its locks go and its jobs are ready again."""
        with contextlib.suppress(Exception):
            conn.terminate()
        with contextlib.suppress(Exception):
            await self.held_pool.release(conn)


async def prepare_statements(conn: asyncpg.Connection) -> None:
    """The held batches' pool's `init`: prepare, outside any transaction, what a held batch runs
    inside its transaction. asyncpg prepares a statement at its first use on a connection and
    waits for the server's answer before it binds: a worker stopped in between left its session
    "active", not idle, so idle_in_transaction_session_timeout never ended it and the batch
    stayed locked (the SIGSTOP test, 1 run in 3). Prepared here, they are one message each.

    Only parsed, through asyncpg's statement cache (`_get_statement`, what its `execute` calls
    first): running them on nothing also compiled their functions, 3 ms of a new backend's time
    on the way to a backlog's first held claim (8-12 ms with two workers starting at once). On an
    asyncpg without it, they are run on nothing. First the array codecs they need
    (shoal.worker.known_types)."""
    await share_array_codecs(conn)
    try:
        prepare = conn._get_statement  # noqa: SLF001 - see above
    except AttributeError:
        await conn.execute(queries.FINISH_HELD_TRACED, "", "", -1, datetime.now(UTC), [], [], [], [], [], [], [])
        await conn.execute(queries.FINISH_HELD_OK, "", "", -1)
        await conn.execute(queries.HELD_CRASHED, "", -1, [])
        return
    for query in (queries.FINISH_HELD_TRACED, queries.FINISH_HELD_OK, queries.HELD_CRASHED):
        await prepare(query, None)
