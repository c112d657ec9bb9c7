"""The claimer: asks for as many jobs as there are free slots and puts them in the job buffer.

It decides how many to claim (free slots, claiming ahead for short jobs) and how (held for
short jobs on a queue without limits, leased otherwise), obeys the queue's throttling (rate
limit, pause, concurrency limit), runs a suspect job alone, gives rate-limited jobs a start
window, and sleeps on LISTEN/NOTIFY (with a polling fallback) when there is nothing to do,
once enqueues know it waits (sql/015_waiter_locks.sql: enqueues notify only waiting workers).
Two claimer coroutines share one Claimer: while one claim is on the server the other can be.

Touches: puts into the job buffer (and `start_by`), `Shared.claimed` (adds), the sink's
`batch_of` (adds a held batch's jobs), the claim counters, `suspects` (clears); opens held
batches through the holder; reads the executor's `busy` and `avg_duration`, the sink's
unwritten outcomes, and asks the keeper whether our leases are in doubt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import asyncpg

from shoal import queries
from shoal.backoff import LoopBackoff
from shoal.tasks import Job
from shoal.worker import metrics
from shoal.worker.executor import Executor, TaskTable
from shoal.worker.held import MAX_HELD, HeldBatch
from shoal.worker.holder import Holder
from shoal.worker.keeper import Keeper
from shoal.worker.outcome import TracedJob
from shoal.worker.state import WAKE_AHEAD, Shared, interval

# Jobs shorter than this on average are claimed ahead (see Claimer._free_slots) and held
# (see Claimer._holding).
PREFETCH_BELOW = 0.002
# How soon a rate-limited job starts after its claim is sent; the claim logs its starts at the end
# of this window (sql/008_resilience.sql), and jobs that miss it are given back.
START_WITHIN = 0.25


class Claimer:
    def __init__(self, shared: Shared, pool: asyncpg.Pool, holder: Holder, keeper: Keeper,
                 executor: Executor, tasks: TaskTable) -> None:
        self.shared = shared
        self.config = shared.config
        self.pool = pool
        self.holder = holder
        self.keeper = keeper
        self.executor = executor
        self._task_info = tasks.get
        self.claiming = 0  # jobs asked for by claims in flight
        self._backlog = False  # the last claim came back full: more jobs are likely ready
        # Wake-ups (sql/015_waiter_locks.sql): the listener session holding the queue's waiter lock
        # (None: not held), the transaction id taken after the lock, how many changes of it so far, at
        # which of them the barrier last passed (it may sleep until notified while no change came
        # since), and one change at a time (two claimers).
        self._held_on: asyncpg.Connection | None = None
        self._since = ""
        self._said = 0
        self._cleared_at: int | None = None
        self._saying = asyncio.Lock()
        self._barrier_retry = LoopBackoff(base=0.01, cap=0.25)

    def _free_slots(self) -> int:
        """How many jobs to claim now. Outcomes still being written do not hold a slot, so the
        next claim overlaps the previous write; a bound on unwritten outcomes keeps memory flat
        when the database is slow. For short jobs (under `PREFETCH_BELOW` seconds on average)
        up to two more batches are claimed ahead, so that a claim is on its way while a batch
        runs and runners never wait for a round trip; slow jobs are never kept from other
        pods that way."""
        if len(self.shared.sink.leased) > 4 * self.config.concurrency:
            return 0
        return self._capacity() - self.executor.busy - self.shared.buffer.count - self.claiming

    def _capacity(self) -> int:
        """Jobs this worker may have claimed and not finished: its slots, plus two batches ahead
        for short jobs."""
        cfg = self.config
        if self.shared.rate_limited:  # what is claimed must start within START_WITHIN: no claiming ahead
            return cfg.concurrency
        return cfg.concurrency * 3 if self.executor.avg_duration < PREFETCH_BELOW else cfg.concurrency

    def _holding(self) -> bool:
        """Claim under a held transaction? Only for short jobs (a slow one would keep the
        transaction open), and not while the queue has told us it is limited or paused (the
        leased claim enforces those)."""
        return (self.config.held_claims and self.executor.avg_duration < PREFETCH_BELOW
                and time.monotonic() >= self.holder.off_until)

    async def run(self) -> None:
        cfg, shared, keeper, holder, executor = self.config, self.shared, self.keeper, self.holder, self.executor
        sink, slot_freed = shared.sink, shared.slot_freed
        backoff = LoopBackoff(base=0.1, cap=5)
        while not shared.stopping.is_set():
            if keeper.in_doubt():
                await keeper.confirm_leases()  # a claim now would race the check of what is ours
                continue
            if sink.orphans:
                # Outcomes of a lost held batch wait to be written: those jobs are ready again
                # in the database, and claiming now could take them back and run them twice.
                sink.ready.set()
                await shared.sleep(0.05)
                continue
            free = self._free_slots()
            holding = self._holding()
            suspect = shared.suspects
            if suspect:
                if shared.claimed or holder.batches or sink.leased or shared.claims_in_flight:
                    # A suspect job runs alone, so that if it kills this worker, rescue knows
                    # which job did: let everything in hand finish and be written first.
                    slot_freed.clear()
                    await shared.sleep(cfg.poll_interval, slot_freed)
                    continue
                free, holding = 1, False
            elif shared.claims_in_flight and not (executor.busy or shared.buffer.count or self._backlog):
                # Idle, and the other claimer is already asking: a second claim would only
                # compete with it on the server for the same few jobs. With a backlog, the two
                # overlap instead: this worker runs a batch faster than a claim comes back.
                slot_freed.clear()
                await shared.sleep(cfg.poll_interval, slot_freed)
                continue
            open_held = len(holder.batches) + shared.claims_in_flight
            if free <= 0 or (executor.busy and free < max(1, cfg.concurrency // 4)) or (
                    holding and (open_held >= MAX_HELD or (open_held and free < self._capacity() // 2))):
                # Wait for a useful batch of free slots rather than claiming one job at a time.
                # A held claim skips every row the open held batches lock, one by one: it waits
                # for half a worker's capacity, or the skipping costs the server more than the
                # claim (with three small overlapping batches it doubled the server's CPU per job).
                slot_freed.clear()
                await slot_freed.wait()
                continue
            shared.wake.clear()
            shared.claims_started += 1
            shared.claims_in_flight += 1
            self.claiming += free
            start_within = START_WITHIN if shared.rate_limited else 0.0
            sent = time.monotonic()
            try:
                rows, batch = await holder.open(free) if holding else (None, None)
                if rows is None:
                    rows = await self.pool.fetch(queries.CLAIM, cfg.queue, cfg.worker_id, free,
                                                 interval(cfg.stale_after), suspect, interval(start_within))
                shared.db_back()
                backoff.succeeded()
                self._backlog = len(rows) >= free
            except Exception as exc:  # never let the claimer die; the database may be restarting
                # (The claim counts as in flight until this wait ends: `finally` runs after it.)
                wait = backoff.failed()
                shared.db_lost("claiming", exc, retry_in=wait)
                await shared.sleep(wait)
                continue
            finally:
                shared.claims_in_flight -= 1
                self.claiming -= free
            throttled = rows[0] if rows and rows[0]["id"] is None else None
            got = len(rows)
            if got and throttled is None:
                self._accept(rows, batch)
                if start_within:
                    # The claim logged these starts at the end of this window: keep that promise.
                    shared.buffer.start_by.update(dict.fromkeys((r[0] for r in rows), sent + start_within))
            # Not kept across the awaits below: a claim's rows are as many objects for the
            # cyclic GC to walk (and promote) while they stay referenced.
            del rows, batch
            if throttled is not None:
                await self._throttled(throttled["task"], throttled["run_at"])
            elif got:
                if self._backlog and self._held_on is not None:
                    # A backlog to work through: enqueues need not notify this worker.
                    await self._say_waiting(False)
            elif suspect:
                shared.suspects = False  # none left (or another worker has them)
            elif not executor.busy:
                if await self._ready_to_sleep():
                    await shared.sleep(cfg.poll_interval, shared.wake)
            else:
                # Nothing ready now; look again when a runner frees up or a job is enqueued.
                slot_freed.clear()
                await shared.sleep(cfg.poll_interval, slot_freed)

    async def _ready_to_sleep(self) -> bool:
        """May this idle worker sleep until a notification? Only once its listener holds the
        queue's waiter lock, every transaction older than that has ended (the barrier: an
        enqueue that found no waiter had its transaction id before, so it is one of them),
        and it has looked at the queue once more since: False until then, and the caller
        claims again (sql/015_waiter_locks.sql has the race this closes)."""
        if self._holds_lock() and self._cleared_at == self._said:
            return True
        shared = self.shared
        try:
            await self._say_waiting(True)
            if self._held_on is None:  # no listener: the keeper opens one, then wakes us
                await shared.sleep(min(1.0, self.config.poll_interval), shared.wake)
                return False
            said = self._said
            if await self.pool.fetchval(queries.WAKE_BARRIER, self._since):
                self._cleared_at = said  # void if another claimer changed it meanwhile (a backlog)
                self._barrier_retry.succeeded()
            else:  # a transaction that may have missed the lock is still open: look again shortly
                await shared.sleep(self._barrier_retry.failed(), shared.wake)
        except Exception as exc:  # the claim that follows finds out whether the database is back
            shared.db_lost("saying this worker waits for jobs", exc)
            await shared.sleep(min(1.0, self.config.poll_interval))
        return False

    def _holds_lock(self) -> bool:
        """Whether the keeper's listener, still open, holds the queue's waiter lock for us."""
        listener = self.keeper.listener
        return listener is not None and not listener.is_closed() and self._held_on is listener

    async def _say_waiting(self, waiting: bool) -> None:
        """Take (True) or let go (False) the queue's waiter lock on the keeper's listener, whose
        session ends with it. One change at a time, so that the lock is held once; when a change
        fails, whether the lock is held is unknown and the listener is closed (the keeper opens
        a new one, without it)."""
        async with self._saying:
            listener = self.keeper.listener
            held = self._holds_lock()
            if held is waiting:
                if not held:
                    self._held_on = None  # (a listener since closed or replaced: nothing to let go)
                return
            self._held_on = None
            self._said += 1
            if listener is None or listener.is_closed():
                return
            try:
                if waiting:
                    self._since = await listener.fetchval(queries.WAIT_FOR_JOBS, self.config.queue)
                    self._held_on = listener
                else:
                    await listener.fetchval(queries.STOP_WAITING, self.config.queue)
            except Exception as exc:
                self.keeper.drop_listener(listener)
                if waiting:
                    raise
                self.shared.db_lost("saying this worker has a backlog", exc)

    async def _throttled(self, reason: str, until: float | None) -> None:
        cfg, shared = self.config, self.shared
        if reason != "paused":
            metrics.RATE_LIMITED.labels(cfg.queue, reason).inc()
        if until is not None:  # epoch seconds
            wait = until - time.time()
            # A small random offset keeps pods that wait for the same slot from colliding.
            await shared.sleep(max(0.0, min(wait, cfg.poll_interval)) + shared.rng.random() * 0.01)
        elif reason == "concurrency_limited":
            await shared.sleep(min(0.25, cfg.poll_interval), shared.slot_freed)
        else:
            await shared.sleep(cfg.poll_interval, shared.wake)

    def _accept(self, rows: list[Any], batch: HeldBatch | None = None) -> None:
        # The hot path of a fast queue: columns by position, a task's lookups once per claim (and
        # its state looked up again only when the task changes from one row to the next: a
        # claim is mostly of one task).
        shared, jb = self.shared, self.shared.buffer
        queue = shared.queue
        now = time.time()
        claimed, buffer, task_info = shared.claimed, jb.items, self._task_info
        batches: dict[str, list[Job]] = {}
        per_task: dict[str, list[Any]] = {}  # task -> [jobs, batch task?, its queue waits' append, TaskInfo]
        last: str | None = None
        state: list[Any] = []
        is_batch, waited = False, cast(Callable[[float], None], None)
        for r in rows:
            task = r[1]
            if task != last:
                known = per_task.get(task)
                if known is None:
                    info = task_info(task)
                    known = per_task[task] = [0, info.spec is not None and info.spec.batch,
                                              info.waited.pending.append, info]
                state = known
                last, is_batch, waited = task, state[1], state[2]
            state[0] += 1
            trace_context = r[6]  # the producer's trace, if it had one (sql/009_trace_context.sql)
            job = (Job(r[0], queue, task, r[2], r[3], r[4], r[5]) if trace_context is None
                   else TracedJob(r[0], queue, task, r[2], r[3], r[4], r[5], trace_context))
            claimed[r[0]] = job
            waited(now - r[5])
            if is_batch:
                batches.setdefault(task, []).append(job)
            else:
                buffer.append(job)
        if batch is not None:
            shared.sink.batch_of.update(dict.fromkeys(batch.ids, batch))
        for name, jobs in batches.items():
            size = self.config.registry.tasks[name].batch_size
            buffer.extend(jobs[i:i + size] for i in range(0, len(jobs), size))
        jb.count += len(rows)
        for task, (n, _, _, info) in per_task.items():
            metrics.JOBS_CLAIMED.labels(queue, task).inc(n)
            # Count the queue waits just appended, and the run times of the jobs of this task
            # finished since its last claim: what piles up between two folds stays that small.
            info.waited.fold()
            info.ran.fold()
        metrics.IN_FLIGHT.labels(queue).set(len(claimed))
        metrics.CLAIMS.labels(queue, "leased" if batch is None else "held").inc()
        jb.wake_runners(min(len(buffer), WAKE_AHEAD))
