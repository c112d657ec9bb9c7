"""The executor: `concurrency` runners take claimed jobs from the job buffer, run their
handlers (with timeouts, cancellation, batch tasks) and put the finished jobs in the outcome sink.

Idle runners park in the buffer and are woken a few at a time as work arrives. A runner
starts nothing while the keeper doubts our leases (after a silence), and gives back the
rate-limited jobs that missed their start window.

Touches: takes from the job buffer (and its `start_by`), puts into the outcome sink (straight
into the job's open held batch when there is one), `Shared.executing`; reads `cancelling`;
removes the late jobs it gives back from `claimed`; counts `Shared.runs` and `busy_seconds`
(the keeper's beat reports them). Owns `busy` and `avg_duration`, which the claimer reads, and
the running jobs' deadlines (deadlines.py: one timer for all, not one per job). A job enqueued
with a trace context runs in a span that continues it (shoal.tracing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from shoal import queries, tracing
from shoal.tasks import Job, TaskSpec, call
from shoal.worker import metrics
from shoal.worker.config import WorkerConfig
from shoal.worker.deadlines import Deadlines
from shoal.worker.keeper import Keeper
from shoal.worker.outcome import Finished, Outcome, TracedJob, failure_outcome
from shoal.worker.state import WAKE_AHEAD, Shared

log = logging.getLogger("shoal.worker")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    spec: TaskSpec | None  # None: no handler registered under that name
    timeout: float | None
    ran: metrics.HistogramChild  # handler run time
    waited: metrics.HistogramChild  # queue wait
    # The coroutine function of an async task (the runner awaits it directly, its timeout kept by
    # deadlines.py); None (a sync handler, or none): run through Executor._run_one.
    plain: Any = None


class TaskTable:
    """What running a job of a task needs, looked up once per task name rather than per job.
    Unknown tasks are not remembered, so a handler registered later is found."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._known: dict[str, TaskInfo] = {}

    def get(self, task: str) -> TaskInfo:
        info = self._known.get(task)
        if info is None:
            cfg = self._config
            spec = cfg.registry.get(task)
            if spec is not None:  # labelled by its name; any other name is metrics.UNREGISTERED_TASK
                metrics.register_task(task)
            timeout = None if spec is None else spec.timeout if spec.timeout is not None else cfg.job_timeout
            plain = spec.fn if spec is not None and spec.is_async and not spec.batch else None
            info = TaskInfo(spec, timeout, metrics.JOB_DURATION.labels(cfg.queue, task),
                            metrics.QUEUE_WAIT.labels(cfg.queue, task), plain)
            if spec is not None:
                self._known[task] = info
        return info

    @property
    def known(self) -> dict[str, TaskInfo]:
        """The tasks looked up so far that have a handler (changed in place only)."""
        return self._known


class Executor:
    def __init__(self, shared: Shared, pool: asyncpg.Pool, keeper: Keeper, tasks: TaskTable) -> None:
        self.shared = shared
        self.config = shared.config
        self.pool = pool
        self.keeper = keeper
        self.busy = 0  # runners executing a job or a batch
        self.avg_duration = 1.0  # moving average of handler run time; assume slow until measured
        self.deadlines = Deadlines(asyncio.get_running_loop())  # the timeouts of the jobs run inline
        # Per-job lookups, bound once: the tables are only ever changed in place.
        self._task_info = tasks.get
        self._known = tasks.known
        self._cancelling = shared.cancelling
        self._put = shared.sink.put

    async def runner(self) -> None:
        """One of `concurrency` long-lived coroutines: cheaper than a task per job. A job runs
        inline here, its handler awaited without a coroutine of ours around it: at tens of
        thousands of no-op jobs a second, every call per job shows in the worker's CPU."""
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        shared, keeper, jb = self.shared, self.keeper, self.shared.buffer
        buffer, idle, start_by = jb.items, jb.idle, jb.start_by
        executing, slot_freed, stopping = shared.executing, shared.slot_freed, shared.stopping
        known, task_info, put_one, deadlines = self._known, self._task_info, shared.sink.put_one, self.deadlines
        doubt_after = keeper.doubt_after
        perf_counter, monotonic = time.perf_counter, time.monotonic
        streak = 0
        runs, seconds = 0, 0.0  # this runner's, not yet added to the shared counts (see _add_runs)
        while True:
            streak += 1
            if streak == 64:
                # Jobs that never await would let one runner empty the buffer in one go, and
                # claims, writes and heartbeats would wait for it: let them in now and then.
                streak = 0
                runs, seconds = self._add_runs(runs, seconds)
                await asyncio.sleep(0)
            while not buffer:
                streak = 0
                runs, seconds = self._add_runs(runs, seconds)
                if stopping.is_set():
                    return
                parked = loop.create_future()
                idle.append(parked)
                try:
                    await parked
                finally:
                    if parked.done() and not parked.cancelled():
                        jb.waking -= 1
            if monotonic() - keeper.beat_ok_at > doubt_after:
                await keeper.confirm_leases()
                continue
            job = buffer.popleft()
            if buffer and idle and jb.waking < WAKE_AHEAD:
                jb.wake_runners(1)  # more work: pass it on before this job may block
            if isinstance(job, list):
                await self._start_batch(job, me)
                continue
            jb.count -= 1
            if start_by and await self._released_late((job,)):
                continue
            info = known.get(job.task) or task_info(job.task)
            fn = info.plain
            self.busy += 1
            executing[job.id] = me
            started = perf_counter()
            try:
                if fn is not None and type(job) is Job:  # async, no span: the common case
                    deadline = None if info.timeout is None else deadlines.start(info.timeout, me)
                    try:
                        await fn(job)
                        finished: Finished = job
                    except asyncio.CancelledError as exc:
                        if deadline is not None and deadlines.timed_out(deadline):
                            finished = self.failure(job, timeout_error(exc))
                        elif not self._was_cancelled((job,)):
                            raise  # shutdown past the drain timeout: the job is released, not failed
                        else:
                            finished = Outcome(job, "cancel", "cancelled while running")
                    except Exception as exc:
                        finished = self.failure(job, exc)
                    finally:
                        if deadline is not None:
                            deadlines.finish(deadline)
                else:
                    finished = await self._run_one(job, info)
            finally:
                executing.pop(job.id, None)
                self.busy -= 1
                slot_freed.set()
            elapsed = perf_counter() - started
            info.ran.pending.append(elapsed)  # counted once per claim (Claimer._accept)
            runs += 1
            seconds += elapsed
            put_one(finished)

    def _add_runs(self, runs: int, seconds: float) -> tuple[int, float]:
        """Add a runner's handler runs since it last did (at most 64 jobs, and whenever it runs
        out of work) to the counts the keeper's beat reports and to the average run time: three
        updates of shared state per job were ~0.09 of the ~1.5 us of Python a no-op job costs the
        worker. The average weighs each job 0.02, as if they had been added one by one at their
        mean. Returns the runner's counts, reset. (A runner cancelled mid-job at shutdown loses
        its last few: the worker is exiting.)"""
        if runs:
            shared = self.shared
            shared.runs += runs
            shared.busy_seconds += seconds
            self.avg_duration += (seconds / runs - self.avg_duration) * (1.0 - 0.98 ** runs)
        return 0, 0.0

    async def _start_batch(self, jobs: list[Job], me: asyncio.Task[None]) -> None:
        """Run one call of a batch task (the runner's bookkeeping around `_run_batch`)."""
        self.shared.buffer.count -= len(jobs)
        if self.shared.buffer.start_by and await self._released_late(jobs):
            return
        executing = self.shared.executing
        self.busy += 1
        for job in jobs:
            executing[job.id] = me
        try:
            await self._run_batch(jobs)
        finally:
            for job in jobs:
                executing.pop(job.id, None)
            self.busy -= 1
            self.shared.slot_freed.set()

    async def _released_late(self, jobs: Sequence[Job]) -> bool:
        """Give back rate-limited jobs that could not start within their claim's window (the
        rate log counted their start at the window's end; starting later could put two claims'
        starts in one window). Their attempt is not counted. False: start them."""
        shared = self.shared
        now = time.monotonic()
        deadlines = [shared.buffer.start_by.pop(job.id, None) for job in jobs]
        if all(d is None or now <= d for d in deadlines):
            return False
        try:
            await self.pool.fetchval(queries.RELEASE, self.config.worker_id, [j.id for j in jobs], False)
        except Exception as exc:
            log.warning("could not give back late rate-limited jobs; starting them", extra={"error": repr(exc)})
            return False
        for job in jobs:
            shared.claimed.pop(job.id, None)
        log.debug("gave back rate-limited jobs that missed their start window", extra={"jobs": len(jobs)})
        shared.count_in_flight()
        shared.slot_freed.set()
        return True

    def failure(self, job: Job, exc: BaseException) -> Outcome:
        cfg = self.config
        timeout = self._task_info(job.task).timeout if isinstance(exc, TimeoutError) else None
        return failure_outcome(job, exc, base=cfg.backoff_base, cap=cfg.backoff_cap, rng=self.shared.rng,
                               timeout=timeout)

    def _was_cancelled(self, jobs: Sequence[Job]) -> bool:
        """A CancelledError meant for this job (not a shutdown): keep the runner alive."""
        if not any(j.id in self._cancelling for j in jobs):
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    async def _run_one(self, job: Job, info: TaskInfo) -> Finished:
        """Run one job the runner does not run inline: with a span (a traced job), in a thread
        (a sync handler), or none (no handler). CancelledError: shutdown, the job is released."""
        spec = info.spec
        span = (tracing.start_job(job.trace_context, job.queue, job.task, job.id, job.attempt)
                if type(job) is TracedJob else None)
        finished: Finished | None = None
        error: BaseException | None = None
        try:
            if spec is None:
                known = ", ".join(sorted(self.config.registry.tasks)) or "none"
                finished = Outcome(job, "fail", f"unknown task {job.task!r}: no handler is registered in this worker "
                                   f"(known: {known}); register it with @shoal.task({job.task!r}) in a module "
                                   "passed to --tasks", None)
            else:
                await self._timed(info.timeout, call(spec, job))
                finished = job
        except asyncio.CancelledError:
            if not self._was_cancelled((job,)):
                raise  # shutdown past the drain timeout: the job is released, not failed
            finished = Outcome(job, "cancel", "cancelled while running")
        except Exception as exc:
            error = exc
            finished = self.failure(job, exc)
        finally:
            if span is not None:  # finished None: released at shutdown
                tracing.end_job(span, finished, error)
        return finished

    async def _timed(self, timeout: float | None, running: Awaitable[T]) -> T:
        """Await a handler's call under the job's timeout, kept by the same deadlines as the jobs
        the runner awaits inline: TimeoutError at the deadline, any other cancellation as is."""
        if timeout is None:
            return await running
        me = asyncio.current_task()
        assert me is not None
        deadline = self.deadlines.start(timeout, me)
        try:
            return await running
        except asyncio.CancelledError as exc:
            if self.deadlines.timed_out(deadline):
                raise timeout_error(exc) from exc
            raise
        finally:
            self.deadlines.finish(deadline)

    async def _run_batch(self, jobs: list[Job]) -> None:
        spec = self.config.registry.tasks[jobs[0].task]
        started = time.perf_counter()
        try:
            result = await self._timed(self._task_info(spec.name).timeout, call(spec, jobs))
            failed = dict(result or {})
            outcomes: list[Finished] = []
            for job in jobs:
                err = failed.get(job.id)
                if err is None:
                    outcomes.append(job)
                else:
                    exc = err if isinstance(err, BaseException) else Exception(str(err))
                    outcomes.append(self.failure(job, exc))
        except asyncio.CancelledError:
            if not self._was_cancelled(jobs):
                raise
            # Cancelling one item cancels the call; the others go back to the queue as retries.
            outcomes = [Outcome(j, "cancel", "cancelled while running") if j.id in self._cancelling
                        else Outcome(j, "fail", "batch interrupted by the cancellation of another item", 0.0)
                        for j in jobs]
        except Exception as exc:
            outcomes = [self.failure(job, exc) for job in jobs]
        elapsed = time.perf_counter() - started
        self._task_info(spec.name).ran.pending.extend([elapsed] * len(jobs))  # counted as the runner's are
        self.shared.runs += len(jobs)
        self.shared.busy_seconds += elapsed * len(jobs)  # each item took the call's time
        self._put(outcomes)


def timeout_error(cancelled: asyncio.CancelledError) -> TimeoutError:
    """The TimeoutError of a job cancelled at its deadline, caused by that cancellation (whose
    traceback shows where the job was stuck), as asyncio.timeout raises it."""
    try:
        raise TimeoutError from cancelled
    except TimeoutError as exc:
        return exc
