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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shoal import builtin_tasks, failures, queries
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


# How soon a rate-limited job starts after its claim is sent; the claim logs its starts at the end
# of this window (sql/008_resilience.sql), and jobs that miss it are given back.
START_WITHIN = 0.25
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
    traceback: str | None = None  # kind "fail": the formatted traceback, bounded (shoal.failures)

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
        self._completing = True  # the completer runs until the final flush takes over
        self._down_since: float | None = None  # monotonic time the database was lost, if it is
        self._up_since = time.monotonic()  # since when every call has been answered
        self._suspects = False  # suspect jobs wait to run alone (sql/008_resilience.sql)
        self._rate_limited = False  # the queue has a rate limit: claim no more than can start now
        self._start_by: dict[int, float] = {}  # job id -> loop time it must start by (rate limits)
        self._orphaned: list[Outcome] = []  # outcomes of held batches lost with their connection
        self._orphaned_batches: list[int] = []  # those batches, to forget once the database answers
        self._beat_ok_at = time.monotonic()  # when the last heartbeat that got through was sent
        # Past this long without a heartbeat through, other workers may have judged us dead and
        # taken our leases: no job starts until a heartbeat says which ones are still ours.
        self._doubt_after = self.config.stale_after - self.config.heartbeat_interval
        self._confirming: asyncio.Task[None] | None = None

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
        loops = [asyncio.create_task(c) for c in (self._claimer(), self._claimer(), self._keeper())]
        completer = asyncio.create_task(self._completer())
        try:
            await self.stopping.wait()
            await self._drain(runners)
        finally:
            for t in loops + runners:
                t.cancel()
            await asyncio.gather(*loops, *runners, return_exceptions=True)
            await self._stop_completer(completer)
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
                # min_size 0: asyncpg would log a traceback per attempt to restore a floor during an outage.
                return await asyncpg.create_pool(self.config.database_url, min_size=0, max_size=5 + MAX_HELD,
                                                 reset=_keep_session, init=_prepare_held_statements,
                                                 server_settings=session_settings(self.config.stale_after))
            except _REFUSED as exc:
                raise ConfigError(f"the database refused the worker's credentials ({exc}): check the user "
                                  "and password in --database-url / SHOAL_DATABASE_URL (on Kubernetes, the "
                                  "Secret the Queue names)") from None
            except (OSError, asyncpg.PostgresError) as exc:
                if self.stopping.is_set():
                    raise
                self._db_lost("connecting", exc, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    def _db_lost(self, doing: str, exc: BaseException, **fields: Any) -> None:
        """One warning when the database goes away, debug lines while it stays away: an outage
        must not flood the log with a line per call (or a traceback per connection)."""
        self.db_ok = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("database connection lost; retrying, outcomes kept in memory",
                        extra={"while": doing, "error": repr(exc), **fields})
        else:
            log.debug("database still unreachable", extra={"while": doing, "error": repr(exc), **fields})

    def _db_back(self) -> None:
        self.db_ok = True
        if self._down_since is not None:
            log.info("database connection back", extra={"down_seconds": round(time.monotonic() - self._down_since, 1),
                                                         "unwritten_outcomes": len(self.outcomes)})
            self._down_since = None
            self._up_since = time.monotonic()

    async def _check_setup(self) -> None:
        assert self.pool is not None
        if not await self.pool.fetchval(queries.SCHEMA_READY):
            raise ConfigError("the database has no Shoal schema: run `shoal migrate` first")
        row = await self.pool.fetchrow(queries.QUEUE_GET, self.config.queue)
        if row is None:
            raise ConfigError(f"--queue: unknown queue {self.config.queue!r}; declare it with "
                              f"`shoal queue create {self.config.queue}` or a Queue resource")
        self._rate_limited = row["rate_limit"] is not None
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
        if self._rate_limited:  # what is claimed must start within START_WITHIN: no claiming ahead
            return cfg.concurrency
        return cfg.concurrency * 3 if self.avg_duration < _PREFETCH_BELOW else cfg.concurrency

    async def _claimer(self) -> None:
        cfg = self.config
        delay = 0.1
        while not self.stopping.is_set():
            if time.monotonic() - self._beat_ok_at > self._doubt_after:
                await self._confirm_leases()  # a claim now would race the check of what is ours
                continue
            if self._orphaned or self._orphaned_batches:
                # Outcomes of a lost held batch wait to be written: those jobs are ready again
                # in the database, and claiming now could take them back and run them twice.
                self.outcome_ready.set()
                await self._sleep(0.05)
                continue
            free = self._free_slots()
            holding = self._holding()
            suspect = self._suspects
            if suspect:
                if self.held or self.batches or self.outcomes or self._claims_in_flight:
                    # A suspect job runs alone, so that if it kills this worker, rescue knows
                    # which job did: let everything in hand finish and be written first.
                    self.slot_freed.clear()
                    await self._sleep(cfg.poll_interval, self.slot_freed)
                    continue
                free, holding = 1, False
            elif self._claims_in_flight and not (self.busy or self.buffered or self._backlog):
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
            start_within = START_WITHIN if self._rate_limited else 0.0
            sent = time.monotonic()
            try:
                rows, batch = await self._claim_held(free) if holding else (None, None)
                if rows is None:
                    rows = await self.pool.fetch(queries.CLAIM, cfg.queue, cfg.worker_id, free,  # type: ignore[union-attr]
                                                 _interval(cfg.stale_after), suspect, _interval(start_within))
                self._db_back()
                delay = 0.1
                self._backlog = len(rows) >= free
            except Exception as exc:  # never let the claimer die; the database may be restarting
                self._db_lost("claiming", exc, retry_in=delay)
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
                if start_within:
                    # The claim logged these starts at the end of this window: keep that promise.
                    self._start_by.update(dict.fromkeys((r[0] for r in rows), sent + start_within))
            elif suspect:
                self._suspects = False  # none left (or another worker has them)
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
                # An earlier batch ended with these jobs in hand: its worker died (or lost its
                # connection). Which job was at fault is unknown, so they go back suspect, to run
                # alone (leased), where a job that kills its worker runs out of attempts.
                await conn.execute(queries.HELD_CRASHED, cfg.worker_id, batch.no, died)
                await transaction.commit()
                await self.pool.release(conn)
                log.warning("jobs of a held batch whose worker died go back to run alone",
                            extra={"jobs": len(died)})
                self._suspects = True
                return None, None
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
            if time.monotonic() - self._beat_ok_at > self._doubt_after:
                await self._confirm_leases()
                continue
            item = buffer.popleft()
            if buffer and idle and self._waking < _WAKE_AHEAD:
                self._wake_runners(1)  # more work: pass it on before this job may block
            jobs = item if isinstance(item, list) else (item,)
            self.buffered -= len(jobs)
            if self._start_by and await self._released_late(jobs):
                continue
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

    async def _released_late(self, jobs: Sequence[Job]) -> bool:
        """Give back rate-limited jobs that could not start within their claim's window (the
        rate log counted their start at the window's end; starting later could put two claims'
        starts in one window). Their attempt is not counted. False: start them."""
        now = time.monotonic()
        deadlines = [self._start_by.pop(job.id, None) for job in jobs]
        if all(d is None or now <= d for d in deadlines):
            return False
        assert self.pool is not None
        try:
            await self.pool.fetchval(queries.RELEASE, self.config.worker_id, [j.id for j in jobs], False)
        except Exception as exc:
            log.warning("could not give back late rate-limited jobs; starting them", extra={"error": repr(exc)})
            return False
        for job in jobs:
            self.held.pop(job.id, None)
        log.debug("gave back rate-limited jobs that missed their start window", extra={"jobs": len(jobs)})
        metrics.IN_FLIGHT.labels(self.config.queue).set(len(self.held))
        self.slot_freed.set()
        return True

    def _failure(self, job: Job, exc: BaseException, *, permanent: bool = False) -> Outcome:
        # The traceback goes to the job's history: the one line alone rarely says why.
        error, tb = failures.describe(exc)
        if isinstance(exc, TimeoutError):  # its traceback still shows where the job was stuck
            error = f"TimeoutError: job timed out after {self._timeout_for(job)}s"
        if permanent or isinstance(exc, PermanentError):
            return Outcome(job, "fail", error, None, tb)
        delay = retry_delay(job.attempt, base=self.config.backoff_base, cap=self.config.backoff_cap, rng=self._rng)
        return Outcome(job, "fail", error, delay, tb)

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
                self._orphaned.append(outcome)
                leased = True
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
            await batch.conn.execute(queries.FINISH_HELD_TRACED, self.config.worker_id, self.config.queue,
                                     batch.no, batch.started_at, plan.lease_ids, *_outcome_columns(record))
            await batch.transaction.commit()
        except Exception as exc:
            self.db_ok = False
            log.warning("lost a held batch with its connection; its finished jobs are recorded once the "
                        "database answers, the others run again", extra={"error": repr(exc), "jobs": len(batch.ids)})
            self._orphaned += [*batch.outcomes.values(), *batch.late]
            self._orphaned_batches.append(batch.no)
            self.outcome_ready.set()
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
        """Write outcomes until `_completing` is cleared; a write in flight then is finished,
        not cut: cancelling it would drop outcomes the handlers produced, and the final flush
        would give those jobs back to run again."""
        delay = 0.1
        while self._completing:
            await self.outcome_ready.wait()
            self.outcome_ready.clear()
            batch, self.outcomes = self.outcomes, []
            if not (batch or self._orphaned or self._orphaned_batches):
                continue
            try:
                if batch:
                    await self._record(batch)
                    batch = []
                if self._orphaned or self._orphaned_batches:
                    await self._record_orphans()
                delay = 0.1
            except BaseException as exc:  # never let the completer die: outcomes would pile up unwritten
                # Keep them: they are written once the database is back (or by the final flush).
                self.outcomes = batch + self.outcomes
                if not isinstance(exc, Exception):
                    raise
                self._db_lost("recording outcomes", exc, pending=len(self.outcomes))
                if self._completing:
                    await asyncio.sleep(delay)
                # Orphaned outcomes hold the claimer back: look for the database more often.
                delay = min(delay * 2, 0.5 if self._orphaned or self._orphaned_batches else 5)
                self.outcome_ready.set()

    async def _record_orphans(self) -> None:
        """Write the outcomes of held batches lost with their connection (sql/008_resilience.sql):
        each job nobody has taken since is recorded rather than run again. A success with
        follow-up jobs is left to run again instead: its follow-ups belong in the transaction
        that records it, which the leased path owns."""
        assert self.pool is not None
        outcomes, batches = self._orphaned, self._orphaned_batches
        self._orphaned, self._orphaned_batches = [], []
        plain = [o for o in outcomes if not (o.kind == "ok" and o.job.followups)]
        try:
            recorded = set(await self.pool.fetchval(queries.RECORD_ORPHANED, self.config.worker_id,
                                                    self.config.queue, batches, *_outcome_columns(plain)) or ())
        except BaseException:
            self._orphaned, self._orphaned_batches = outcomes + self._orphaned, batches + self._orphaned_batches
            raise
        self._account([o for o in plain if o.job.id in recorded])
        log.info("recorded outcomes of held batches lost with their connection",
                 extra={"recorded": len(recorded), "outcomes": len(outcomes)})

    async def _stop_completer(self, completer: asyncio.Task[None]) -> None:
        """Let the completer finish the write it has in flight, then stop it; what is left is the
        final flush's. Cancelled only if that write hangs past the drain timeout."""
        self._completing = False
        self.outcome_ready.set()
        done, _ = await asyncio.wait([completer], timeout=self.config.drain_timeout)
        if not done:
            completer.cancel()
        await asyncio.gather(completer, return_exceptions=True)

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
        await db.execute(queries.COMPLETE_TRACED, self.config.worker_id, self.config.queue,
                         *_outcome_columns(batch))
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
                fields: dict[str, Any] = {"job_id": o.job.id, "task": o.job.task, "attempt": o.job.attempt,
                                          "error": o.error}
                if kind == "failed":  # no retry_in: a final failure has no next attempt to wait for
                    log.warning("job failed", extra=fields)
                else:
                    log.warning("job failed, will retry", extra={**fields, "retry_in": o.delay})
                if o.traceback is not None:  # also kept in shoal.job_errors: `shoal jobs show ID`
                    log.debug("traceback of the failed attempt", extra={**fields, "traceback": o.traceback})
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
                await self._look_around()
                if self._down_since is None and time.monotonic() - self._up_since >= cfg.stale_after:
                    # Only a worker that has itself been connected for the whole staleness window
                    # may judge others dead: after an outage every live worker needs that long to
                    # be heard again, and rescuing them earlier would re-run jobs they still run.
                    await self.pool.fetchval(queries.RESCUE, _interval(cfg.stale_after))  # type: ignore[union-attr]
                if time.monotonic() - last_prune > cfg.prune_interval:
                    last_prune = time.monotonic()
                    await self._prune()
                self._db_back()
            except Exception as exc:  # never let the keeper die: it is what keeps our jobs ours
                self._db_lost("heartbeat", exc)
                if self.listener is not None:
                    with contextlib.suppress(Exception):
                        self.listener.terminate()
                    self.listener = None
            # Plain sleep: the keeper must go on beating while running jobs drain after a stop.
            await asyncio.sleep(cfg.heartbeat_interval if self.db_ok else min(1.0, cfg.heartbeat_interval))

    async def _look_around(self) -> None:
        """Read what changes how this worker claims: the queue's rate limit (claim only what
        can start at once) and suspect jobs waiting to run alone."""
        assert self.pool is not None
        row = await self.pool.fetchrow(queries.QUEUE_GET, self.config.queue)
        if row is not None:
            self._rate_limited = row["rate_limit"] is not None
        suspects = bool(await self.pool.fetchval(queries.SUSPECT_READY, self.config.queue))
        if suspects and not self._suspects:
            log.info("suspect jobs are waiting: running them one at a time, alone")
            self.slot_freed.set()
        self._suspects = suspects

    async def _confirm_leases(self) -> None:
        """Wait until a heartbeat gets through after a silence (a SIGSTOP, a stall, an outage):
        one check shared by every runner and claimer."""
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm())
        await asyncio.shield(self._confirming)

    async def _confirm(self) -> None:
        delay = 0.1
        while time.monotonic() - self._beat_ok_at > self._doubt_after and not self.stopping.is_set():
            try:
                await self._beat()
                self._db_back()
            except Exception as exc:
                self._db_lost("heartbeat", exc)
            if time.monotonic() - self._beat_ok_at > self._doubt_after:
                await self._sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _beat(self) -> None:
        """Say we are alive, learn which running jobs are ours and which to cancel. After a
        silence long enough for rescue, drop the claimed, unstarted jobs no longer ours: another
        worker may have run them already."""
        cfg = self.config
        sent = time.monotonic()
        silence = sent - self._beat_ok_at > self._doubt_after
        if silence and self.batches:
            # A held transaction this old may be gone (the server ends idle ones): close each
            # now, which turns its unstarted jobs into leases, or forgets them if it is lost.
            for batch in self.batches.values():
                batch.done.set()
            if self._closers:
                await asyncio.wait(list(self._closers), timeout=cfg.stale_after)
        claims_before = self._claims_started
        rows = await self.pool.fetch(queries.HEARTBEAT, cfg.worker_id, cfg.queue,  # type: ignore[union-attr]
                                     socket.gethostname(), os.getpid())
        for r in rows:
            if r["cancel_requested"]:
                self._cancel_job(r["id"])
        if self._claims_in_flight or self._claims_started != claims_before:
            return  # a claim raced this read: its jobs may not be in `held` yet
        if silence:
            self._drop_taken({r["id"] for r in rows}, sent)
        self._beat_ok_at = sent
        orphans = [r["id"] for r in rows if r["id"] not in self.held]
        if orphans:
            # A claim committed but its answer was lost (connection cut): nobody would run these.
            n = await self.pool.fetchval(queries.RELEASE, cfg.worker_id, orphans, False)  # type: ignore[union-attr]
            if n:  # 0 when the read merely predates our own completion of those jobs
                log.warning("released jobs claimed by a lost request", extra={"released": n})

    def _drop_taken(self, ours: set[int], silence_ended: float) -> None:
        """Forget the buffered leased jobs that a rescue gave away while we were silent."""
        taken = {job.id for item in self.buffer for job in (item if isinstance(item, list) else (item,))
                 if job.id not in ours and job.id not in self.batch_of}
        if not taken:
            return
        self._unbuffer(taken)
        for job_id in taken:
            self.held.pop(job_id, None)
            self._start_by.pop(job_id, None)
        metrics.IN_FLIGHT.labels(self.config.queue).set(len(self.held))
        self.slot_freed.set()
        log.warning("not running jobs claimed before a silence: other workers took them meanwhile",
                    extra={"jobs": len(taken), "silent_seconds": round(silence_ended - self._beat_ok_at, 1)})

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
                if self._orphaned or self._orphaned_batches:
                    await self._record_orphans()
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
                                                       list[float | None], list[int], list[str | None]]:
    """Outcomes as shoal.record's arrays: ok ids, failed ids with their errors and retry delays,
    cancelled ids, then the failures' tracebacks (last: the argument sql/006 added). The leased
    and the held path write the same columns."""
    fails = [o for o in outcomes if o.kind == "fail"]
    return ([o.job.id for o in outcomes if o.kind == "ok"], [o.job.id for o in fails], [o.error for o in fails],
            [o.delay for o in fails], [o.job.id for o in outcomes if o.kind == "cancel"],
            [o.traceback for o in fails])


# Errors that retrying cannot mend: say so and stop, instead of retrying forever at warning level.
_REFUSED = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)


def session_settings(stale_after: float) -> dict[str, str]:
    """Per-session limits that let the *server* take back a hung or cut-off worker's jobs.

    A held batch is a transaction left open while its jobs run (at most `HOLD_BUDGET`, then it
    commits): a worker that stops (SIGSTOP, a frozen VM) or loses the network mid-batch would
    keep those rows locked for as long as its session lives, which without this is until TCP
    gives up (~2 h). Ending idle transactions after --stale-after, and probing the client's
    socket with keepalives on the same scale, bounds that by the server alone.
    """
    ms = str(max(1000, int(stale_after * 1000)))
    probe = str(max(1, int(stale_after / 3)))
    return {"idle_in_transaction_session_timeout": ms, "tcp_keepalives_idle": probe,
            "tcp_keepalives_interval": probe, "tcp_keepalives_count": "3"}


async def _prepare_held_statements(conn: asyncpg.Connection) -> None:
    """Prepare, outside any transaction, what a held batch runs inside its transaction (by
    running it on nothing). asyncpg prepares a statement at its first use on a connection and
    waits for the server's answer before it binds: a worker stopped in between left its session
    "active", not idle, so idle_in_transaction_session_timeout never ended it and the batch
    stayed locked (the SIGSTOP test, 1 run in 3). Prepared here, they are one message each."""
    await conn.execute(queries.FINISH_HELD_TRACED, "", "", -1, datetime.now(UTC), [], [], [], [], [], [], [])
    await conn.execute(queries.HELD_CRASHED, "", -1, [])


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
