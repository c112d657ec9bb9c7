"""The execution loop: claim in batches, run handlers, record outcomes in batches.

Cooperating coroutines share one pool:
- two claimers ask for as many jobs as there are free slots, and sleep on LISTEN/NOTIFY (with a
  polling fallback) when there is nothing to do;
- `concurrency` runners take claimed jobs from a buffer and run them; idle runners are parked
  and woken a few at a time as work arrives;
- the completer writes every finished outcome since its last write in one `shoal.complete()`
  call: natural batching, so no per-job round trip under load and no added latency when idle;
- the keeper beats, rescues jobs of dead workers and prunes expired jobs.
Short jobs on queues without limits are claimed *held* (worker/held.py, sql/004_held_claims.sql):
locked by a transaction kept open while they run, their outcomes written by that transaction's
commit instead of the completer.
Database errors never kill the loop: each coroutine backs off and retries, and outcomes
stay in memory until written, so a database restart loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shoal import builtin_tasks, queries
from shoal.backoff import retry_delay
from shoal.client import NewJob, enqueue_many
from shoal.errors import ConfigError, PermanentError, ShoalError
from shoal.tasks import Job, TaskRegistry, TaskSpec, call
from shoal.tasks import registry as default_registry
from shoal.worker import metrics
from shoal.worker.held import HOLD_BUDGET, MAX_HELD, HeldBatch, close_plan

log = logging.getLogger("shoal.worker")

# Jobs shorter than this on average are claimed ahead (see Worker._free_slots) and held
# (see Worker._holding).
_PREFETCH_BELOW = 0.002
_MAINTENANCE_LOCK = int.from_bytes(b"shoalmnt", "big") & 0x7FFF_FFFF_FFFF_FFFF
assert builtin_tasks  # registered on import


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    database_url: str
    queue: str
    concurrency: int = 10
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0  # a worker silent this long is dead and its jobs are rescued
    drain_timeout: float = 30.0
    job_timeout: float | None = None
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    prune_interval: float = 10.0
    held_claims: bool = True  # short jobs on unlimited queues: one write per job (sql/004_held_claims.sql)
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    worker_id: str = field(default_factory=default_worker_id)
    registry: TaskRegistry = field(default_factory=lambda: default_registry)

    def validate(self) -> WorkerConfig:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be >= 1")
        if self.stale_after <= self.heartbeat_interval * 2:
            raise ConfigError("--stale-after must exceed twice --heartbeat-interval, or live workers look dead")
        return self


# Runners woken at once for new work; each one that takes an item wakes another while work remains.
_WAKE_AHEAD = 8


@dataclass(frozen=True, slots=True)
class _TaskInfo:
    spec: TaskSpec | None  # None: no handler registered under that name
    timeout: float | None
    ran: Any  # handler duration histogram child
    waited: Any  # queue wait histogram child


@dataclass(slots=True)
class Outcome:
    job: Job
    kind: str  # "ok" | "fail" | "cancel"
    error: str | None = None
    delay: float | None = None  # None with kind "fail": no retry

    @property
    def final_failure(self) -> bool:
        return self.kind == "fail" and (self.delay is None or self.job.attempt >= self.job.max_attempts)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config.validate()
        self.pool: asyncpg.Pool | None = None
        self.listener: asyncpg.Connection | None = None
        self.held: dict[int, Job] = {}  # every job claimed and not yet recorded
        self.buffer: collections.deque[Job | list[Job]] = collections.deque()  # claimed, not started
        self.executing: dict[int, asyncio.Task[None]] = {}  # job id -> runner executing it
        self.busy = 0  # runners executing a job or a batch
        self.buffered = 0  # jobs in `buffer`
        self.claiming = 0  # jobs asked for by claims in flight
        self.avg_duration = 1.0  # moving average of handler run time; assume slow until measured
        self.outcomes: list[Outcome] = []
        self.cancelling: set[int] = set()
        self.wake = asyncio.Event()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()  # parked runners
        self._waking = 0  # runners woken for work that have not resumed yet
        self.slot_freed = asyncio.Event()
        self.outcome_ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.db_ok = False
        self.last_tick = time.monotonic()
        self._rng = random.Random()
        self._tasks: dict[str, _TaskInfo] = {}
        self._claims_started = 0
        self._claims_in_flight = 0
        self._backlog = False  # the last claim came back full: more jobs are likely ready
        self.batches: dict[int, HeldBatch] = {}  # open held batches by number
        self.batch_of: dict[int, HeldBatch] = {}  # job id -> its open held batch
        self._batch_seq = 0
        self._closers: set[asyncio.Task[None]] = set()
        self._held_off_until = 0.0  # the queue has limits or is paused: leased claims only
        self._lost: dict[int, Job] = {}  # running jobs of held batches lost with their connection

    # -- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: no new claims, draining", extra={"in_flight": len(self.held)})
            self.stopping.set()
            self.buffer.clear()  # not started: released on exit, attempts unchanged
            self.buffered = 0
            for event in (self.wake, self.slot_freed):
                event.set()
            self._wake_runners(len(self._idle))
            for batch in self.batches.values():
                batch.done.set()  # close now: what never started goes back untouched

    def live(self) -> bool:
        return time.monotonic() - self.last_tick < max(60.0, self.config.heartbeat_interval * 6)

    def ready(self) -> bool:
        return self.db_ok and not self.stopping.is_set()

    async def run(self) -> None:
        """Run until `request_stop()`; then drain, release and return."""
        cfg = self.config
        self.pool = await self._connect_pool()
        await self._check_setup()
        await self._beat()
        health = None
        if cfg.metrics_port is not None:
            from shoal.worker.health import HealthServer

            health = HealthServer(metrics.REGISTRY, self.live, self.ready)
            port = await health.start(cfg.metrics_host, cfg.metrics_port)
            log.info("serving /metrics, /healthz, /readyz", extra={"port": port})
        log.info("worker started", extra={"queue": cfg.queue, "worker_id": cfg.worker_id,
                                          "concurrency": cfg.concurrency})
        runners = [asyncio.create_task(self._runner()) for _ in range(cfg.concurrency)]
        # Two claimers: while one claim is on the server the other can be too (SKIP LOCKED keeps
        # them apart), so a fast queue keeps both database cores busy.
        loops = [asyncio.create_task(c) for c in (self._claimer(), self._claimer(), self._completer(),
                                                   self._keeper())]
        try:
            await self.stopping.wait()
            await self._drain(runners)
        finally:
            for t in loops + runners:
                t.cancel()
            await asyncio.gather(*loops, *runners, return_exceptions=True)
            await self._close_all_held()
            await self._final_flush()
            if self.listener is not None:
                with contextlib.suppress(Exception):
                    await self.listener.close()
            await self.pool.close()
            if health:
                await health.stop()
            log.info("worker stopped", extra={"worker_id": cfg.worker_id})

    async def _connect_pool(self) -> asyncpg.Pool:
        delay = 0.5
        while True:
            try:
                # Two claimers, the completer, the keeper, and one connection per open held batch.
                return await asyncpg.create_pool(self.config.database_url, min_size=1, max_size=5 + MAX_HELD,
                                                 reset=_keep_session)
            except (OSError, asyncpg.PostgresError) as exc:
                if self.stopping.is_set():
                    raise
                log.warning("database unreachable, retrying", extra={"error": str(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _check_setup(self) -> None:
        assert self.pool is not None
        if not await self.pool.fetchval(queries.SCHEMA_READY):
            raise ConfigError("the database has no Shoal schema: run `shoal migrate` first")
        if await self.pool.fetchrow(queries.QUEUE_GET, self.config.queue) is None:
            raise ConfigError(f"--queue: unknown queue {self.config.queue!r}; declare it with "
                              f"`shoal queue create {self.config.queue}` or a Queue resource")
        self.db_ok = True

    # -- claiming ----------------------------------------------------------------------------
    def _free_slots(self) -> int:
        """How many jobs to claim now. Outcomes still being written do not hold a slot, so the
        next claim overlaps the previous write; a bound on unwritten outcomes keeps memory flat
        when the database is slow. For short jobs (under `_PREFETCH_BELOW` seconds on average)
        up to two more batches are claimed ahead, so that a claim is on its way while a batch
        runs and runners never wait for a round trip; slow jobs are never held back from other
        pods that way."""
        cfg = self.config
        if len(self.outcomes) > 4 * cfg.concurrency:
            return 0
        return self._capacity() - self.busy - self.buffered - self.claiming

    def _capacity(self) -> int:
        """Jobs this worker may have claimed and not finished: its slots, plus two batches ahead
        for short jobs."""
        cfg = self.config
        return cfg.concurrency * 3 if self.avg_duration < _PREFETCH_BELOW else cfg.concurrency

    async def _claimer(self) -> None:
        cfg = self.config
        delay = 0.1
        while not self.stopping.is_set():
            free = self._free_slots()
            holding = self._holding()
            if self._claims_in_flight and not (self.busy or self.buffered or self._backlog):
                # Idle, and the other claimer is already asking: a second claim would only
                # compete with it on the server for the same few jobs. With a backlog, the two
                # overlap instead: this worker runs a batch faster than a claim comes back.
                self.slot_freed.clear()
                await self._sleep(cfg.poll_interval, self.slot_freed)
                continue
            open_held = len(self.batches) + self._claims_in_flight
            if free <= 0 or (self.busy and free < max(1, cfg.concurrency // 4)) or (
                    holding and (open_held >= MAX_HELD or (open_held and free < self._capacity() // 2))):
                # Wait for a useful batch of free slots rather than claiming one job at a time.
                # A held claim skips every row the open held batches lock, one by one: it waits
                # for half a worker's capacity, or the skipping costs the server more than the
                # claim (with three small overlapping batches it doubled the server's CPU per job).
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            self.wake.clear()
            self._claims_started += 1
            self._claims_in_flight += 1
            self.claiming += free
            try:
                rows, batch = await self._claim_held(free) if holding else (None, None)
                if rows is None:
                    rows = await self.pool.fetch(queries.CLAIM, cfg.queue, cfg.worker_id, free,  # type: ignore[union-attr]
                                                 _interval(cfg.stale_after))
                self.db_ok, delay = True, 0.1
                self._backlog = len(rows) >= free
            except Exception as exc:  # never let the claimer die; the database may be restarting
                self.db_ok = False
                log.warning("claim failed, backing off", extra={"error": repr(exc), "retry_in": delay})
                await self._sleep(delay)
                delay = min(delay * 2, 5)
                continue
            finally:
                self._claims_in_flight -= 1
                self.claiming -= free
            if rows and rows[0]["id"] is None:
                await self._throttled(rows[0]["task"], rows[0]["run_at"])
            elif rows:
                self._accept(rows, batch)
            elif not self.busy:
                await self._sleep(cfg.poll_interval, self.wake)
            else:
                # Nothing ready now; look again when a runner frees up or a job is enqueued.
                self.slot_freed.clear()
                await self._sleep(cfg.poll_interval, self.slot_freed)

    def _holding(self) -> bool:
        """Claim under a held transaction? Only for short jobs (a slow one would keep the
        transaction open), and not while the queue has told us it is limited or paused (the
        leased claim enforces those)."""
        return (self.config.held_claims and self.avg_duration < _PREFETCH_BELOW
                and time.monotonic() >= self._held_off_until)

    async def _claim_held(self, limit: int) -> tuple[list[Any] | None, HeldBatch | None]:
        """Lock up to `limit` jobs in a new held batch. (None, None): claim leased instead."""
        cfg = self.config
        assert self.pool is not None
        conn = await self.pool.acquire()
        transaction = conn.transaction()
        try:
            await transaction.start()
            rows = await conn.fetch(queries.CLAIM_HELD, cfg.queue, limit)
            if not rows or rows[0]["id"] is None:
                await transaction.rollback()
                await self.pool.release(conn)
                if rows:  # limited or paused: the leased claim knows what to do, and when
                    self._held_off_until = time.monotonic() + cfg.poll_interval * 5
                    return None, None
                return [], None
            self._batch_seq += 1
            ids = [r["id"] for r in rows]
            batch = HeldBatch(self._batch_seq, conn, transaction, datetime.now(UTC), ids)
            died = [r[0] for r in await self.pool.fetch(queries.HOLD_BATCH, cfg.worker_id, batch.no,
                                                        rows[0]["xact"], ids)]
            if died:
                # An earlier batch ended with these jobs in hand: count that attempt before
                # anything runs again, so a job that kills its worker still runs out of attempts.
                await conn.execute(queries.HELD_CRASHED, cfg.worker_id, batch.no, died)
                await transaction.commit()
                await self.pool.release(conn)
                log.warning("counted the attempt of jobs whose worker died holding them",
                            extra={"jobs": len(died)})
                return None, None  # claim leased this time: the attempt is counted up front
        except BaseException:
            await self._drop_connection(conn)
            raise
        self.batches[batch.no] = batch
        closer = asyncio.create_task(self._close_held_later(batch))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)
        return rows, batch

    async def _drop_connection(self, conn: asyncpg.Connection) -> None:
        """Give back a connection whose transaction state is unknown: closing it ends the
        transaction, so its locks go and its jobs are ready again."""
        assert self.pool is not None
        with contextlib.suppress(Exception):
            conn.terminate()
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def _throttled(self, reason: str, until: float | None) -> None:
        if reason != "paused":
            metrics.RATE_LIMITED.labels(self.config.queue, reason).inc()
        if until is not None:  # epoch seconds
            wait = until - time.time()
            # A small random offset keeps pods that wait for the same slot from colliding.
            await self._sleep(max(0.0, min(wait, self.config.poll_interval)) + self._rng.random() * 0.01)
        elif reason == "concurrency_limited":
            await self._sleep(min(0.25, self.config.poll_interval), self.slot_freed)
        else:
            await self._sleep(self.config.poll_interval, self.wake)

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        waiter = event if event is not None else self.stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), seconds)

    def _task_info(self, task: str) -> _TaskInfo:
        """What running a job of `task` needs, looked up once per task name rather than per job.
        Unknown tasks are not remembered, so a handler registered later is found."""
        info = self._tasks.get(task)
        if info is None:
            spec = self.config.registry.get(task)
            timeout = None if spec is None else spec.timeout if spec.timeout is not None else self.config.job_timeout
            info = _TaskInfo(spec, timeout, metrics.JOB_DURATION.labels(self.config.queue, task),
                             metrics.QUEUE_WAIT.labels(self.config.queue, task))
            if spec is not None:
                self._tasks[task] = info
        return info

    def _accept(self, rows: list[Any], batch: HeldBatch | None = None) -> None:
        # The hot path of a fast queue: columns by position, per-task lookups once per claim.
        queue = self.config.queue
        now = time.time()
        held, buffer = self.held, self.buffer
        claimed: dict[str, int] = {}
        batches: dict[str, list[Job]] = {}
        per_task: dict[str, tuple[bool, Any]] = {}  # task -> (batch task?, queue-wait histogram)
        for r in rows:
            task = r[1]
            job = Job(r[0], queue, task, r[2], r[3], r[4], r[5])
            held[job.id] = job
            known = per_task.get(task)
            if known is None:
                info = self._task_info(task)
                known = per_task[task] = (info.spec is not None and info.spec.batch, info.waited)
                claimed[task] = 0
            claimed[task] += 1
            wait = now - r[5]
            known[1].observe(wait if wait > 0.0 else 0.0)
            if known[0]:
                batches.setdefault(task, []).append(job)
            else:
                buffer.append(job)
        if batch is not None:
            self.batch_of.update(dict.fromkeys(batch.ids, batch))
        for name, jobs in batches.items():
            size = self.config.registry.tasks[name].batch_size
            buffer.extend(jobs[i:i + size] for i in range(0, len(jobs), size))
        self.buffered += len(rows)
        for task, n in claimed.items():
            metrics.JOBS_CLAIMED.labels(queue, task).inc(n)
        metrics.IN_FLIGHT.labels(queue).set(len(self.held))
        metrics.CLAIMS.labels(queue, "leased" if batch is None else "held").inc()
        self._wake_runners(min(len(buffer), _WAKE_AHEAD))

    def _wake_runners(self, n: int) -> None:
        """Unpark up to `n` idle runners. Work wakes a few at a time, and each runner that takes
        an item wakes one more while work remains (see `_runner`): waking every idle runner for
        every claim cost more than no-op jobs themselves, as most found the buffer already empty."""
        idle = self._idle
        while n > 0 and idle:
            parked = idle.popleft()
            if not parked.done():
                parked.set_result(None)
                self._waking += 1
                n -= 1

    # -- running -----------------------------------------------------------------------------
    async def _runner(self) -> None:
        """One of `concurrency` long-lived coroutines: cheaper than a task per job."""
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        buffer, idle, executing, slot_freed = self.buffer, self._idle, self.executing, self.slot_freed
        streak = 0
        while True:
            streak += 1
            if streak == 64:
                # Jobs that never await would let one runner empty the buffer in one go, and
                # claims, writes and heartbeats would wait for it: let them in now and then.
                streak = 0
                await asyncio.sleep(0)
            while not buffer:
                streak = 0
                if self.stopping.is_set():
                    return
                parked = loop.create_future()
                idle.append(parked)
                try:
                    await parked
                finally:
                    if parked.done() and not parked.cancelled():
                        self._waking -= 1
            item = buffer.popleft()
            if buffer and idle and self._waking < _WAKE_AHEAD:
                self._wake_runners(1)  # more work: pass it on before this job may block
            jobs = item if isinstance(item, list) else (item,)
            self.buffered -= len(jobs)
            self.busy += 1
            for job in jobs:
                executing[job.id] = me
            try:
                await (self._run_batch(item) if isinstance(item, list) else self._run_one(item))
            finally:
                for job in jobs:
                    executing.pop(job.id, None)
                self.busy -= 1
                slot_freed.set()

    def _failure(self, job: Job, exc: BaseException, *, permanent: bool = False) -> Outcome:
        if isinstance(exc, TimeoutError):
            error = f"TimeoutError: job timed out after {self._timeout_for(job)}s"
        else:
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if permanent or isinstance(exc, PermanentError):
            return Outcome(job, "fail", error, None)
        delay = retry_delay(job.attempt, base=self.config.backoff_base, cap=self.config.backoff_cap, rng=self._rng)
        return Outcome(job, "fail", error, delay)

    def _timeout_for(self, job: Job) -> float | None:
        return self._task_info(job.task).timeout

    def _was_cancelled(self, jobs: list[Job]) -> bool:
        """A CancelledError meant for this job (not a shutdown): keep the runner alive."""
        if not any(j.id in self.cancelling for j in jobs):
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    async def _run_one(self, job: Job) -> None:
        info = self._task_info(job.task)
        spec = info.spec
        started = time.perf_counter()
        try:
            if spec is None:
                known = ", ".join(sorted(self.config.registry.tasks)) or "none"
                outcome = Outcome(job, "fail", f"unknown task {job.task!r}: no handler is registered in this worker "
                                  f"(known: {known}); register it with @shoal.task({job.task!r}) in a module "
                                  "passed to --tasks", None)
            else:
                if info.timeout is None:
                    await (spec.fn(job) if spec.is_async else call(spec, job))
                else:
                    async with asyncio.timeout(info.timeout):
                        await call(spec, job)
                outcome = Outcome(job, "ok")
        except asyncio.CancelledError:
            if not self._was_cancelled([job]):
                raise  # shutdown past the drain timeout: the job is released, not failed
            outcome = Outcome(job, "cancel", "cancelled while running")
        except Exception as exc:
            outcome = self._failure(job, exc)
        elapsed = time.perf_counter() - started
        self.avg_duration += (elapsed - self.avg_duration) * 0.02
        info.ran.observe(elapsed)
        batch = self.batch_of.get(job.id)
        if batch is not None and not self._lost:
            batch.add(outcome)  # the common case of a fast queue, without `_record_later`'s loop
        else:
            self._record_later((outcome,))

    async def _run_batch(self, jobs: list[Job]) -> None:
        spec = self.config.registry.tasks[jobs[0].task]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._task_info(spec.name).timeout):
                result = await call(spec, jobs)
            failed = dict(result or {})
            outcomes = []
            for job in jobs:
                err = failed.get(job.id)
                if err is None:
                    outcomes.append(Outcome(job, "ok"))
                else:
                    exc = err if isinstance(err, BaseException) else Exception(str(err))
                    outcomes.append(self._failure(job, exc))
        except asyncio.CancelledError:
            if not self._was_cancelled(jobs):
                raise
            # Cancelling one item cancels the call; the others go back to the queue as retries.
            outcomes = [Outcome(j, "cancel", "cancelled while running") if j.id in self.cancelling
                        else Outcome(j, "fail", "batch interrupted by the cancellation of another item", 0.0)
                        for j in jobs]
        except Exception as exc:
            outcomes = [self._failure(job, exc) for job in jobs]
        elapsed = time.perf_counter() - started
        hist = self._task_info(spec.name).ran
        for _ in jobs:
            hist.observe(elapsed)
        self._record_later(outcomes)

    def _record_later(self, outcomes: Sequence[Outcome]) -> None:
        leased = False
        for outcome in outcomes:
            job_id = outcome.job.id
            if self._lost.get(job_id) is outcome.job:
                del self._lost[job_id]  # its batch is gone: the job is ready again in the database
                continue
            batch = self.batch_of.get(job_id)
            if batch is not None:
                batch.add(outcome)
            else:
                self.outcomes.append(outcome)
                leased = True
        if leased:
            self.outcome_ready.set()

    async def _close_held_later(self, batch: HeldBatch) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.done.wait(), HOLD_BUDGET)
        await self._close_held(batch)

    async def _close_all_held(self) -> None:
        """At exit: close every open batch (runners are gone, so nothing more will start)."""
        for batch in self.batches.values():
            batch.done.set()
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=30)

    async def _close_held(self, batch: HeldBatch) -> None:
        """One commit: outcomes so far recorded, unfinished jobs turned into leases (or, when
        stopping, the never-started ones unlocked). If the transaction is lost instead, every
        job of the batch is ready again in the database, so we forget them all."""
        batch.closing = True
        started = {job_id for job_id in batch.ids if job_id in self.executing}
        plan = close_plan(batch, stopping=self.stopping.is_set(), started=started)
        record = plan.record
        try:
            await batch.conn.execute(queries.FINISH_HELD, self.config.worker_id, self.config.queue, batch.no,
                                     batch.started_at, plan.lease_ids, *_outcome_columns(record))
            await batch.transaction.commit()
        except Exception as exc:
            self.db_ok = False
            log.warning("lost a held batch with its connection; its jobs will run again",
                        extra={"error": repr(exc), "jobs": len(batch.ids)})
            for job_id in batch.ids:
                self.batch_of.pop(job_id, None)
                job = self.held.pop(job_id, None)
                if job is not None and job_id in started:
                    self._lost[job_id] = job
            self._unbuffer(set(batch.ids))
            metrics.IN_FLIGHT.labels(self.config.queue).set(len(self.held))
            await self._drop_connection(batch.conn)
            self.slot_freed.set()
            return
        finally:
            self.batches.pop(batch.no, None)
        assert self.pool is not None
        await self.pool.release(batch.conn)
        for job_id in batch.ids:
            self.batch_of.pop(job_id, None)
        for job_id in plan.released:
            self.held.pop(job_id, None)
        self._account(record)
        # Leases from now on: outcomes that came in while we committed, and relayed successes.
        self._record_later(plan.relay + batch.late)

    def _unbuffer(self, ids: set[int]) -> None:
        """Drop jobs that are no longer ours from the not-yet-started buffer."""
        kept: collections.deque[Job | list[Job]] = collections.deque()
        for item in self.buffer:
            if isinstance(item, list):
                item = [job for job in item if job.id not in ids]
                if item:
                    kept.append(item)
            elif item.id not in ids:
                kept.append(item)
        self.buffer.clear()  # in place: runners hold a reference to it
        self.buffer.extend(kept)
        self.buffered = sum(len(item) if isinstance(item, list) else 1 for item in kept)

    # -- recording ---------------------------------------------------------------------------
    async def _completer(self) -> None:
        delay = 0.1
        while True:
            await self.outcome_ready.wait()
            self.outcome_ready.clear()
            batch, self.outcomes = self.outcomes, []
            if not batch:
                continue
            try:
                await self._record(batch)
                delay = 0.1
            except Exception as exc:  # never let the completer die: outcomes would pile up unwritten
                # Keep them: they are written once the database is back.
                self.outcomes = batch + self.outcomes
                self.db_ok = False
                log.warning("recording outcomes failed, will retry",
                            extra={"error": repr(exc), "pending": len(self.outcomes), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
                self.outcome_ready.set()

    async def _record(self, batch: list[Outcome]) -> None:
        assert self.pool is not None
        if any(o.kind == "ok" and o.job.followups for o in batch):
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        await self._complete(conn, batch)
                except (asyncpg.PostgresError, ShoalError) as exc:
                    if isinstance(exc, asyncpg.PostgresConnectionError):
                        raise
                    # One job's follow-ups were refused (e.g. unknown queue): record jobs one
                    # by one so that only that job fails, with the reason.
                    for outcome in batch:
                        await self._record_alone(conn, outcome)
        else:
            await self._complete(self.pool, batch)
        self._account(batch)

    async def _record_alone(self, conn: asyncpg.Connection, outcome: Outcome) -> None:
        try:
            async with conn.transaction():
                await self._complete(conn, [outcome])
        except (asyncpg.PostgresError, ShoalError) as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                raise
            failed = self._failure(outcome.job, RuntimeError(f"follow-up jobs could not be enqueued: {exc}"))
            outcome.job.followups = []
            await self._complete(conn, [failed])
            outcome.kind, outcome.error, outcome.delay = failed.kind, failed.error, failed.delay

    async def _complete(self, db: Any, batch: list[Outcome]) -> None:
        await db.execute(queries.COMPLETE, self.config.worker_id, self.config.queue, *_outcome_columns(batch))
        followups: list[NewJob] = [f for o in batch if o.kind == "ok" for f in o.job.followups]
        if followups:
            await enqueue_many(db, followups)

    def _account(self, batch: list[Outcome]) -> None:
        queue = self.config.queue
        counts: dict[tuple[Any, str], int] = {}
        held, cancelling = self.held, self.cancelling
        for o in batch:
            if o.kind == "ok":  # the common case first
                key = (metrics.JOBS_SUCCEEDED, o.job.task)
                counts[key] = counts.get(key, 0) + 1
                held.pop(o.job.id, None)
                if cancelling:
                    cancelling.discard(o.job.id)
                continue
            kind = "failed" if o.final_failure else ("retried" if o.kind == "fail" else o.kind)
            key = (metrics.JOBS_SUCCEEDED if kind == "ok" else metrics.JOBS_FAILED if kind == "failed"
                   else metrics.JOBS_RETRIED if kind == "retried" else metrics.JOBS_CANCELLED, o.job.task)
            counts[key] = counts.get(key, 0) + 1
            self.held.pop(o.job.id, None)
            self.cancelling.discard(o.job.id)
            if o.kind == "fail":
                log.warning("job failed" if o.final_failure else "job failed, will retry",
                            extra={"job_id": o.job.id, "task": o.job.task, "attempt": o.job.attempt,
                                   "error": o.error, "retry_in": o.delay})
        for (counter, task), n in counts.items():
            counter.labels(queue, task).inc(n)
        metrics.IN_FLIGHT.labels(queue).set(len(self.held))
        self.slot_freed.set()

    # -- keeping -----------------------------------------------------------------------------
    async def _keeper(self) -> None:
        cfg = self.config
        last_prune = 0.0
        while True:
            self.last_tick = time.monotonic()
            try:
                await self._ensure_listener()
                await self._beat()
                await self.pool.fetchval(queries.RESCUE, _interval(cfg.stale_after))  # type: ignore[union-attr]
                if time.monotonic() - last_prune > cfg.prune_interval:
                    last_prune = time.monotonic()
                    await self._prune()
                self.db_ok = True
            except Exception as exc:  # never let the keeper die: it is what keeps our jobs ours
                self.db_ok = False
                log.warning("heartbeat failed", extra={"error": repr(exc)})
                if self.listener is not None:
                    with contextlib.suppress(Exception):
                        self.listener.terminate()
                    self.listener = None
            # Plain sleep: the keeper must go on beating while running jobs drain after a stop.
            await asyncio.sleep(cfg.heartbeat_interval if self.db_ok else min(1.0, cfg.heartbeat_interval))

    async def _beat(self) -> None:
        cfg = self.config
        claims_before = self._claims_started
        rows = await self.pool.fetch(queries.HEARTBEAT, cfg.worker_id, cfg.queue,  # type: ignore[union-attr]
                                     socket.gethostname(), os.getpid())
        for r in rows:
            if r["cancel_requested"]:
                self._cancel_job(r["id"])
        if self._claims_in_flight or self._claims_started != claims_before:
            return  # a claim raced this read: its jobs may not be in `held` yet
        orphans = [r["id"] for r in rows if r["id"] not in self.held]
        if orphans:
            # A claim committed but its answer was lost (connection cut): nobody would run these.
            n = await self.pool.fetchval(queries.RELEASE, cfg.worker_id, orphans, False)  # type: ignore[union-attr]
            if n:  # 0 when the read merely predates our own completion of those jobs
                log.warning("released jobs claimed by a lost request", extra={"released": n})

    async def _prune(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():  # type: ignore[union-attr]
            if await conn.fetchval(queries.TRY_MAINTENANCE_LOCK, _MAINTENANCE_LOCK):
                deleted = await conn.fetchval(queries.PRUNE, 1000)
                if deleted:
                    log.info("pruned expired jobs", extra={"deleted": deleted})

    async def _ensure_listener(self) -> None:
        if self.listener is not None and not self.listener.is_closed():
            return
        self.listener = await asyncpg.connect(self.config.database_url)
        await self.listener.add_listener("shoal_jobs", self._on_jobs)
        await self.listener.add_listener("shoal_cancel", self._on_cancel)
        self.wake.set()  # we may have missed notifications while disconnected

    def _on_jobs(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.config.queue:
            self.wake.set()

    def _on_cancel(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._cancel_job(int(payload))

    def _cancel_job(self, job_id: int) -> None:
        task = self.executing.get(job_id)
        if task is not None and job_id not in self.cancelling:
            log.info("cancelling running job", extra={"job_id": job_id})
            self.cancelling.add(job_id)
            task.cancel()

    # -- stopping ----------------------------------------------------------------------------
    async def _drain(self, runners: list[asyncio.Task[None]]) -> None:
        """Let running jobs finish for the drain timeout; interrupt the rest, which are then
        released (not failed) by `_final_flush`."""
        if self.busy:
            log.info("draining running jobs", extra={"running": self.busy, "timeout": self.config.drain_timeout})
        self._wake_runners(len(self._idle))  # idle runners see `stopping` and return
        await asyncio.wait(runners, timeout=self.config.drain_timeout)

    async def _final_flush(self) -> None:
        """Write what finished, give back what did not: attempts unchanged, run again at once."""
        assert self.pool is not None
        for attempt in range(20):
            try:
                if self.outcomes:
                    batch, self.outcomes = self.outcomes, []
                    try:
                        await self._record(batch)
                    except BaseException:
                        self.outcomes = batch + self.outcomes
                        raise
                released = [j for j in self.held if j not in {o.job.id for o in self.outcomes}]
                n = await self.pool.fetchval(queries.RELEASE, self.config.worker_id, released, True)
                if n:
                    log.info("released unfinished jobs", extra={"released": n})
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("final flush failed, retrying", extra={"error": repr(exc), "attempt": attempt})
                await asyncio.sleep(min(0.2 * 2 ** attempt, 3))
        log.error("could not record outcomes before exit; the jobs will be rescued after --stale-after",
                  extra={"unrecorded": len(self.outcomes)})


def _outcome_columns(outcomes: list[Outcome]) -> tuple[list[int], list[int], list[str | None],
                                                       list[float | None], list[int]]:
    """Outcomes as shoal.record's arrays: ok ids, failed ids with their errors and retry delays,
    cancelled ids (the leased and the held path write the same columns)."""
    fails = [o for o in outcomes if o.kind == "fail"]
    return ([o.job.id for o in outcomes if o.kind == "ok"], [o.job.id for o in fails], [o.error for o in fails],
            [o.delay for o in fails], [o.job.id for o in outcomes if o.kind == "cancel"])


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Give a connection back to the pool as it is. asyncpg's default reset is one more round
    trip per release (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) and the worker's pool has
    no session state to undo: its locks are transaction-scoped, it never LISTENs on a pooled
    connection (the listener has its own) and it never SETs. asyncpg still rolls back a
    transaction left open before this is called."""


def _interval(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


async def run_worker(config: WorkerConfig, *, install_signals: bool = True) -> None:
    """Run a worker in the current event loop, stopping on SIGTERM/SIGINT."""
    import signal

    worker = Worker(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
    await worker.run()
