"""The keeper: keeps this worker's jobs its own and its view of the queue fresh.

Every heartbeat interval it beats (which also says which running jobs to cancel), reads the
queue's settings, rescues the jobs of dead workers, prunes expired jobs, and LISTENs for new
jobs and cancellations on a connection of its own. It also owns the silence check: after a
silence longer than stale_after - heartbeat_interval (a SIGSTOP, a stall, an outage) other
workers may have judged us dead and taken our leases, so no job starts and no claim is sent
until a heartbeat says which claimed jobs are still ours. Its beats tell the database link
(`Shared.db_ok`) that the database is back.

Touches: `Shared.claimed`, the job buffer (drops what a rescue took), `cancelling` and the
runners in `executing` (cancels them), `rate_limited`, `suspects`, `wake`; the holder (closes
every open batch after a silence). Reads the claim counters to tell when a claim raced a beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import asyncpg

from shoal import queries
from shoal.backoff import LoopBackoff
from shoal.worker.holder import Holder
from shoal.worker.state import Shared, interval

log = logging.getLogger("shoal.worker")

_MAINTENANCE_LOCK = int.from_bytes(b"shoalmnt", "big") & 0x7FFF_FFFF_FFFF_FFFF


class Keeper:
    def __init__(self, shared: Shared, pool: asyncpg.Pool, holder: Holder) -> None:
        self.shared = shared
        self.config = cfg = shared.config
        self.pool = pool
        self.holder = holder
        self.listener: asyncpg.Connection | None = None
        self.last_tick = time.monotonic()  # the loop's last turn: liveness
        self.beat_ok_at = time.monotonic()  # when the last heartbeat that got through was sent
        # Past this long without a heartbeat through, other workers may have judged us dead and
        # taken our leases: no job starts until a heartbeat says which ones are still ours.
        self.doubt_after = cfg.stale_after - cfg.heartbeat_interval
        self._confirming: asyncio.Task[None] | None = None

    async def run(self) -> None:
        cfg, shared = self.config, self.shared
        last_prune = 0.0
        while True:
            self.last_tick = time.monotonic()
            try:
                await self._ensure_listener()
                if time.monotonic() - self.beat_ok_at >= cfg.heartbeat_interval / 2:
                    # (Not at the first turn, just after the worker's start-up beat, which run() does
                    # not follow unless it got through: while a backlog starts draining, that beat
                    # would take one more new connection.)
                    await self.beat()
                await self._look_around()
                if shared.down_since is None and time.monotonic() - shared.up_since >= cfg.stale_after:
                    # Only a worker that has itself been connected for the whole staleness window
                    # may judge others dead: after an outage every live worker needs that long to
                    # be heard again, and rescuing them earlier would re-run jobs they still run.
                    await self.pool.fetchval(queries.RESCUE, interval(cfg.stale_after))
                if time.monotonic() - last_prune > cfg.prune_interval:
                    last_prune = time.monotonic()
                    await self._prune()
                shared.db_back()
            except Exception as exc:  # never let the keeper die: it is what keeps our jobs ours
                shared.db_lost("heartbeat", exc)
                self.drop_listener()
            # Plain sleep: the keeper must go on beating while running jobs drain after a stop.
            await asyncio.sleep(cfg.heartbeat_interval if shared.db_ok else min(1.0, cfg.heartbeat_interval))

    async def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await self.listener.close()

    async def _look_around(self) -> None:
        """Read what changes how this worker claims: the queue's rate limit (claim only what
        can start at once) and suspect jobs waiting to run alone."""
        shared = self.shared
        row = await self.pool.fetchrow(queries.QUEUE_GET, self.config.queue)
        if row is not None:
            shared.rate_limited = row["rate_limit"] is not None
        suspects = bool(await self.pool.fetchval(queries.SUSPECT_READY, self.config.queue))
        if suspects and not shared.suspects:
            log.info("suspect jobs are waiting: running them one at a time, alone")
            shared.slot_freed.set()
        shared.suspects = suspects

    # -- the silence check -------------------------------------------------------------------
    def in_doubt(self) -> bool:
        """Silent for so long that our leases may have been taken (see `doubt_after`)."""
        return time.monotonic() - self.beat_ok_at > self.doubt_after

    async def confirm_leases(self) -> None:
        """Wait until a heartbeat gets through after a silence (a SIGSTOP, a stall, an outage):
        one check shared by every runner and claimer."""
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm())
        await asyncio.shield(self._confirming)

    async def _confirm(self) -> None:
        shared = self.shared
        backoff = LoopBackoff(base=0.1, cap=1.0)
        while self.in_doubt() and not shared.stopping.is_set():
            try:
                await self.beat()
                shared.db_back()
            except Exception as exc:
                shared.db_lost("heartbeat", exc)
            if self.in_doubt():
                await shared.sleep(backoff.failed())

    async def beat(self) -> None:
        """Say we are alive, learn which running jobs are ours and which to cancel. After a
        silence long enough for rescue, drop the claimed, unstarted jobs no longer ours: another
        worker may have run them already."""
        cfg, shared = self.config, self.shared
        sent = time.monotonic()
        silence = sent - self.beat_ok_at > self.doubt_after
        if silence and self.holder.batches:
            # A held transaction this old may be gone (the server ends idle ones): close each
            # now, which turns its unstarted jobs into leases, or forgets them if it is lost.
            await self.holder.close_all(timeout=cfg.stale_after)
        claims_before = shared.claims_started
        rows = await self.pool.fetch(queries.HEARTBEAT, cfg.worker_id, cfg.queue, socket.gethostname(), os.getpid(),
                                     shared.runs, shared.busy_seconds)
        for r in rows:
            if r["cancel_requested"]:
                self._cancel_job(r["id"])
        if shared.claims_in_flight or shared.claims_started != claims_before:
            return  # a claim raced this read: its jobs may not be in `claimed` yet
        if silence and self.holder.batches:
            # A held claim sent before the silence came back while this beat closed the others:
            # its transaction may be gone as well and its jobs run by others. Not confirmed until
            # it is closed too (the next beat does), or its jobs would start.
            return
        if silence:
            self._drop_taken({r["id"] for r in rows}, sent)
        self.beat_ok_at = sent
        orphans = [r["id"] for r in rows if r["id"] not in shared.claimed]
        if orphans:
            # A claim committed but its answer was lost (connection cut): nobody would run these.
            n = await self.pool.fetchval(queries.RELEASE, cfg.worker_id, orphans, False)
            if n:  # 0 when the read merely predates our own recording of those jobs
                log.warning("released jobs claimed by a lost request", extra={"released": n})

    def _drop_taken(self, ours: set[int], silence_ended: float) -> None:
        """Forget the buffered leased jobs that a rescue gave away while we were silent."""
        shared = self.shared
        batch_of = shared.sink.batch_of
        taken = {job_id for job_id in shared.buffer.job_ids() if job_id not in ours and job_id not in batch_of}
        if not taken:
            return
        shared.buffer.remove(taken)
        for job_id in taken:
            shared.claimed.pop(job_id, None)
            shared.buffer.start_by.pop(job_id, None)
        shared.count_in_flight()
        shared.slot_freed.set()
        log.warning("not running jobs claimed before a silence: other workers took them meanwhile",
                    extra={"jobs": len(taken), "silent_seconds": round(silence_ended - self.beat_ok_at, 1)})

    # -- maintenance and notifications -------------------------------------------------------
    async def _prune(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(queries.TRY_MAINTENANCE_LOCK, _MAINTENANCE_LOCK):
                deleted = await conn.fetchval(queries.PRUNE, 1000)
                if deleted:
                    log.info("pruned expired jobs", extra={"deleted": deleted})

    def drop_listener(self, listener: asyncpg.Connection | None = None) -> None:
        """Close the listener (`listener`, if it still is the one) at once: its session's locks go
        with it. The next turn of the loop opens a new one."""
        if self.listener is not None and (listener is None or listener is self.listener):
            with contextlib.suppress(Exception):
                self.listener.terminate()
            self.listener = None

    async def _ensure_listener(self) -> None:
        if self.listener is not None and not self.listener.is_closed():
            return
        listener = await asyncpg.connect(self.config.database_url)
        try:
            await listener.add_listener("shoal_jobs", self._on_jobs)
            await listener.add_listener("shoal_cancel", self._on_cancel)
        except BaseException:
            listener.terminate()
            raise
        # Published once listening: the claimer sends its waiter lock on it (one query at a time).
        self.listener = listener
        self.shared.wake.set()  # we may have missed notifications while disconnected

    def _on_jobs(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.config.queue:
            self.shared.wake.set()

    def _on_cancel(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._cancel_job(int(payload))

    def _cancel_job(self, job_id: int) -> None:
        task = self.shared.executing.get(job_id)
        if task is not None and job_id not in self.shared.cancelling:
            log.info("cancelling running job", extra={"job_id": job_id})
            self.shared.cancelling.add(job_id)
            task.cancel()
