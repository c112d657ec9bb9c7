"""The completer: records the outcomes of leased jobs, in batches.

Every outcome finished since its last write goes in one `shoal.record()` call: natural
batching, so no per-job round trip under load and no added latency when idle. It also records
the outcomes of held batches lost with their connection (orphaned outcomes), and at exit does
the final flush: record what finished, give back what did not.

Touches: the outcome sink (takes `leased` and the orphaned outcomes, puts back what it could
not write), `Shared.claimed` and `cancelling` (forgets what it recorded), `slot_freed`.
Outcomes stay in memory until written, so a database restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from shoal import queries
from shoal.backoff import LoopBackoff
from shoal.client import enqueue_many
from shoal.errors import ShoalError
from shoal.worker import metrics
from shoal.worker.known_types import id_array
from shoal.worker.outcome import Finished, Outcome, failure_outcome, has_followups, job_of, outcome_columns
from shoal.worker.state import Shared

log = logging.getLogger("shoal.worker")


class Completer:
    def __init__(self, shared: Shared, pool: asyncpg.Pool) -> None:
        self.shared = shared
        self.config = shared.config
        self.sink = shared.sink
        self.pool = pool
        self._running = True  # until `stop`: then the final flush takes over

    async def run(self) -> None:
        """Record outcomes until `stop`; a write in flight then is finished, not cut: cancelling
        it would drop outcomes the handlers produced, and the final flush would give those jobs
        back to run again."""
        sink = self.sink
        backoff = LoopBackoff(base=0.1, cap=5)
        while self._running:
            await sink.ready.wait()
            sink.ready.clear()
            batch, sink.leased = sink.leased, []
            if not (batch or sink.orphans):
                continue
            try:
                if batch:
                    await self.record(batch)
                    batch = []
                if sink.orphans:
                    await self.record_orphans()
                backoff.succeeded()
            except BaseException as exc:  # never let the completer die: outcomes would pile up unwritten
                # Keep them: they are written once the database is back (or by the final flush).
                sink.leased = batch + sink.leased
                if not isinstance(exc, Exception):
                    raise
                self.shared.db_lost("recording outcomes", exc, pending=len(sink.leased))
                # Orphaned outcomes hold the claimer back: look for the database more often.
                backoff.cap = 0.5 if sink.orphans else 5
                wait = backoff.failed()
                if self._running:
                    await asyncio.sleep(wait)
                sink.ready.set()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Let `task` (running `run`) finish the write it has in flight, then stop; what is left
        is the final flush's. Cancelled only if that write hangs past the drain timeout."""
        self._running = False
        self.sink.ready.set()
        done, _ = await asyncio.wait([task], timeout=self.config.drain_timeout)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def record(self, batch: list[Finished]) -> None:
        if has_followups(batch):
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        await self._call_record(conn, batch)
                except (asyncpg.PostgresError, ShoalError) as exc:
                    if isinstance(exc, asyncpg.PostgresConnectionError):
                        raise
                    # One job's follow-ups were refused (e.g. unknown queue): record jobs one
                    # by one so that only that job fails, with the reason.
                    batch = [await self._record_alone(conn, finished) for finished in batch]
        else:
            await self._call_record(self.pool, batch, followups=False)
        self.account(batch)

    async def _record_alone(self, conn: asyncpg.Connection, finished: Finished) -> Finished:
        """Record one finished job; a success whose follow-ups are refused is recorded as a
        failure instead, and returned as such (an Outcome has no follow-ups: the job keeps
        them, so that if this write is lost too, the success is tried again whole)."""
        try:
            async with conn.transaction():
                await self._call_record(conn, [finished])
            return finished
        except (asyncpg.PostgresError, ShoalError) as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                raise
            cfg = self.config
            failed = failure_outcome(job_of(finished), RuntimeError(f"follow-up jobs could not be enqueued: {exc}"),
                                     base=cfg.backoff_base, cap=cfg.backoff_cap, rng=self.shared.rng)
            await self._call_record(conn, [failed])
            return failed

    async def _call_record(self, db: Any, batch: list[Finished], *, followups: bool = True) -> None:
        """One `shoal.record()` call, and the follow-up jobs of the successes (in the caller's
        transaction when there are any). `followups=False`: the caller knows there are none."""
        ok, *others = outcome_columns(batch)
        await db.execute(queries.RECORD_TRACED, self.config.worker_id, self.config.queue, id_array(ok), *others)
        if followups and has_followups(batch):
            await enqueue_many(db, [new for finished in batch for new in finished.followups])

    async def record_orphans(self) -> None:
        """Record the finished jobs of held batches lost with their connection
        (sql/008_resilience.sql): each job nobody has taken since is recorded rather than run
        again. A success with follow-up jobs is left to run again instead: its follow-ups
        belong in the transaction that records it, which the leased path owns."""
        sink = self.sink
        orphaned, batches = sink.orphaned, sink.orphaned_batches
        sink.orphaned, sink.orphaned_batches = [], []
        plain = [f for f in orphaned if not f.followups]
        try:
            recorded = set(await self.pool.fetchval(queries.RECORD_ORPHANED, self.config.worker_id,
                                                    self.config.queue, batches, *outcome_columns(plain)) or ())
        except BaseException:
            sink.orphaned, sink.orphaned_batches = orphaned + sink.orphaned, batches + sink.orphaned_batches
            raise
        self.account([f for f in plain if f.id in recorded])
        log.info("recorded outcomes of held batches lost with their connection",
                 extra={"recorded": len(recorded), "outcomes": len(orphaned)})

    def account(self, batch: list[Finished]) -> None:
        """After a write (here or by a held batch's commit): forget the recorded jobs, count
        them, log the failures, and free their slots."""
        queue = self.config.queue
        succeeded: dict[str, int] = {}  # task -> count: the common case, one key per task
        counts: dict[tuple[Any, str], int] = {}
        claimed_pop, cancelling = self.shared.claimed.pop, self.shared.cancelling
        for o in batch:
            claimed_pop(o.id, None)
            if not isinstance(o, Outcome):  # the job itself: it succeeded
                task = o.task
                succeeded[task] = succeeded.get(task, 0) + 1
                continue
            job = o.job
            kind = "failed" if o.final_failure else ("retried" if o.kind == "fail" else o.kind)
            key = (metrics.JOBS_FAILED if kind == "failed" else metrics.JOBS_RETRIED if kind == "retried"
                   else metrics.JOBS_CANCELLED, job.task)
            counts[key] = counts.get(key, 0) + 1
            if o.kind == "fail":
                fields: dict[str, Any] = {"job_id": job.id, "task": job.task, "attempt": job.attempt,
                                          "error": o.error}
                if kind == "failed":  # no retry_in: a final failure has no next attempt to wait for
                    log.warning("job failed", extra=fields)
                else:
                    log.warning("job failed, will retry", extra={**fields, "retry_in": o.delay})
                if o.traceback is not None:  # also kept in shoal.job_errors: `shoal jobs show ID`
                    log.debug("traceback of the failed attempt", extra={**fields, "traceback": o.traceback})
        if cancelling:
            for o in batch:
                cancelling.discard(o.id)
        for task, n in succeeded.items():
            metrics.JOBS_SUCCEEDED.labels(queue, task).inc(n)
        for (counter, task), n in counts.items():
            counter.labels(queue, task).inc(n)
        self.shared.count_in_flight()
        self.shared.slot_freed.set()

    async def final_flush(self) -> None:
        """Record what finished, give back what did not: attempts unchanged, run again at once."""
        sink, cfg = self.sink, self.config
        backoff = LoopBackoff(base=0.2, cap=3)
        for attempt in range(20):
            try:
                if sink.leased:
                    batch, sink.leased = sink.leased, []
                    try:
                        await self.record(batch)
                    except BaseException:
                        sink.leased = batch + sink.leased
                        raise
                if sink.orphans:
                    await self.record_orphans()
                unwritten = {f.id for f in sink.leased}
                released = [j for j in self.shared.claimed if j not in unwritten]
                n = await self.pool.fetchval(queries.RELEASE, cfg.worker_id, released, True)
                if n:
                    log.info("released unfinished jobs", extra={"released": n})
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("final flush failed, retrying", extra={"error": repr(exc), "attempt": attempt})
                await asyncio.sleep(backoff.failed())
        log.error("could not record outcomes before exit; the jobs will be rescued after --stale-after",
                  extra={"unrecorded": len(sink.leased)})
