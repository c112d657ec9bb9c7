"""The execution loop: claim in batches, run handlers, record outcomes in batches.

Four cooperating coroutines share one pool:
- the claimer asks `shoal.claim()` for as many jobs as there are free slots, and sleeps on
  LISTEN/NOTIFY (with a polling fallback) when there is nothing to do;
- each claimed job runs in its own asyncio task, bounded by `concurrency`;
- the completer writes every finished outcome since its last write in one `shoal.complete()`
  call: natural batching, so no per-job round trip under load and no added latency when idle;
- the keeper beats, rescues jobs of dead workers and prunes expired jobs.
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

log = logging.getLogger("shoal.worker")

# Jobs shorter than this on average are claimed one batch ahead (see Worker._free_slots).
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


@dataclass
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
        self.work_ready = asyncio.Event()
        self.slot_freed = asyncio.Event()
        self.outcome_ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.db_ok = False
        self.last_tick = time.monotonic()
        self._rng = random.Random()
        self._timers: dict[str, tuple[Any, Any]] = {}
        self._claims_started = 0
        self._claims_in_flight = 0

    # -- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: no new claims, draining", extra={"in_flight": len(self.held)})
            self.stopping.set()
            self.buffer.clear()  # not started: released on exit, attempts unchanged
            self.buffered = 0
            for event in (self.wake, self.slot_freed, self.work_ready):
                event.set()

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
                return await asyncpg.create_pool(self.config.database_url, min_size=1, max_size=4)
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
        one extra batch is claimed ahead, so runners never wait for a claim's round trip;
        slow jobs are never held back from other pods that way."""
        cfg = self.config
        if len(self.outcomes) > 4 * cfg.concurrency:
            return 0
        ahead = cfg.concurrency if self.avg_duration < _PREFETCH_BELOW else 0
        return cfg.concurrency + ahead - self.busy - self.buffered - self.claiming

    async def _claimer(self) -> None:
        cfg = self.config
        delay = 0.1
        while not self.stopping.is_set():
            free = self._free_slots()
            if free <= 0 or (self.busy and free < max(1, cfg.concurrency // 4)):
                # Wait for a useful batch of free slots rather than claiming one job at a time.
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            self.wake.clear()
            self._claims_started += 1
            self._claims_in_flight += 1
            self.claiming += free
            try:
                rows = await self.pool.fetch(queries.CLAIM, cfg.queue, cfg.worker_id, free,  # type: ignore[union-attr]
                                             _interval(cfg.stale_after))
                self.db_ok, delay = True, 0.1
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
                self._accept(rows)
            elif not self.busy:
                await self._sleep(cfg.poll_interval, self.wake)
            else:
                # Nothing ready now; look again when a runner frees up or a job is enqueued.
                self.slot_freed.clear()
                await self._sleep(cfg.poll_interval, self.slot_freed)

    async def _throttled(self, reason: str, until: datetime | None) -> None:
        if reason != "paused":
            metrics.RATE_LIMITED.labels(self.config.queue, reason).inc()
        if until is not None:
            wait = (until - datetime.now(UTC)).total_seconds()
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

    def _timers_for(self, task: str) -> tuple[Any, Any]:
        timers = self._timers.get(task)
        if timers is None:
            timers = (metrics.JOB_DURATION.labels(self.config.queue, task),
                      metrics.QUEUE_WAIT.labels(self.config.queue, task))
            self._timers[task] = timers
        return timers

    def _accept(self, rows: list[Any]) -> None:
        queue = self.config.queue
        now = datetime.now(UTC)
        registry = self.config.registry
        claimed: dict[str, int] = {}
        batches: dict[str, list[Job]] = {}
        for r in rows:
            job = Job(r["id"], queue, r["task"], r["payload"], r["attempts"], r["max_attempts"], r["run_at"])
            self.held[job.id] = job
            claimed[job.task] = claimed.get(job.task, 0) + 1
            self._timers_for(job.task)[1].observe(max(0.0, (now - job.scheduled_at).total_seconds()))
            spec = registry.get(job.task)
            if spec is not None and spec.batch:
                batches.setdefault(job.task, []).append(job)
            else:
                self.buffer.append(job)
        for name, jobs in batches.items():
            size = registry.tasks[name].batch_size
            self.buffer.extend(jobs[i:i + size] for i in range(0, len(jobs), size))
        self.buffered += len(rows)
        for task, n in claimed.items():
            metrics.JOBS_CLAIMED.labels(queue, task).inc(n)
        metrics.IN_FLIGHT.labels(queue).set(len(self.held))
        self.work_ready.set()

    # -- running -----------------------------------------------------------------------------
    async def _runner(self) -> None:
        """One of `concurrency` long-lived coroutines: cheaper than a task per job."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            while not self.buffer:
                if self.stopping.is_set():
                    return
                self.work_ready.clear()
                await self.work_ready.wait()
            item = self.buffer.popleft()
            self.buffered -= len(item) if isinstance(item, list) else 1
            self.busy += 1
            try:
                if isinstance(item, list):
                    for job in item:
                        self.executing[job.id] = me
                    await self._run_batch(item)
                else:
                    self.executing[item.id] = me
                    await self._run_one(item)
            finally:
                for job in item if isinstance(item, list) else (item,):
                    self.executing.pop(job.id, None)
                self.busy -= 1
                self.slot_freed.set()

    def _timeout(self, spec: TaskSpec) -> float | None:
        return spec.timeout if spec.timeout is not None else self.config.job_timeout

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
        spec = self.config.registry.get(job.task)
        return self._timeout(spec) if spec else None

    def _was_cancelled(self, jobs: list[Job]) -> bool:
        """A CancelledError meant for this job (not a shutdown): keep the runner alive."""
        if not any(j.id in self.cancelling for j in jobs):
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    async def _run_one(self, job: Job) -> None:
        spec = self.config.registry.get(job.task)
        started = time.perf_counter()
        try:
            if spec is None:
                known = ", ".join(sorted(self.config.registry.tasks)) or "none"
                outcome = Outcome(job, "fail", f"unknown task {job.task!r}: no handler is registered in this worker "
                                  f"(known: {known}); register it with @shoal.task({job.task!r}) in a module "
                                  "passed to --tasks", None)
            else:
                timeout = self._timeout(spec)
                if timeout is None:
                    await call(spec, job)
                else:
                    async with asyncio.timeout(timeout):
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
        self._timers_for(job.task)[0].observe(elapsed)
        self._record_later([outcome])

    async def _run_batch(self, jobs: list[Job]) -> None:
        spec = self.config.registry.tasks[jobs[0].task]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout(spec)):
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
        hist = self._timers_for(spec.name)[0]
        for _ in jobs:
            hist.observe(elapsed)
        self._record_later(outcomes)

    def _record_later(self, outcomes: list[Outcome]) -> None:
        self.outcomes.extend(outcomes)
        self.outcome_ready.set()

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
        ok = [o.job.id for o in batch if o.kind == "ok"]
        fails = [o for o in batch if o.kind == "fail"]
        cancels = [o.job.id for o in batch if o.kind == "cancel"]
        await db.execute(queries.COMPLETE, self.config.worker_id, ok, [o.job.id for o in fails],
                         [o.error for o in fails], [o.delay for o in fails], cancels)
        followups: list[NewJob] = [f for o in batch if o.kind == "ok" for f in o.job.followups]
        if followups:
            await enqueue_many(db, followups)

    def _account(self, batch: list[Outcome]) -> None:
        queue = self.config.queue
        counts: dict[tuple[Any, str], int] = {}
        for o in batch:
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
        self.work_ready.set()  # idle runners see `stopping` and return
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
