"""Where the worker's roles meet: the two seams, and the little else they all read.

- `JobBuffer`: jobs claimed and not started. The claimer puts, the executor's runners take;
  a runner with nothing to take parks here and is woken when work arrives.
- `OutcomeSink`: jobs finished and not yet written (a success as the Job itself, else its
  Outcome: outcome.py). The executor puts; each goes to its open held batch (written by that
  batch's commit, holder.py) or to the completer.
- `Shared`: what several roles read and write besides: the jobs this worker has claimed, the
  ones running and being cancelled, the claims in flight, what the queue told us, the
  database link's state, the wake-up events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from shoal.tasks import Job
from shoal.worker import metrics
from shoal.worker.config import WorkerConfig
from shoal.worker.held import HeldBatch
from shoal.worker.outcome import Finished, Item, job_of

log = logging.getLogger("shoal.worker")

# Runners woken at once for new work; each one that takes an item wakes another while work remains.
WAKE_AHEAD = 8


class JobBuffer:
    """Claimed, not started. `items` is cleared and filtered in place: runners hold it."""

    __slots__ = ("items", "count", "idle", "waking", "start_by")

    def __init__(self) -> None:
        self.items: collections.deque[Item] = collections.deque()
        self.count = 0  # jobs in `items`
        self.idle: collections.deque[asyncio.Future[None]] = collections.deque()  # parked runners
        self.waking = 0  # runners woken for work that have not resumed yet
        self.start_by: dict[int, float] = {}  # job id -> loop time it must start by (rate limits)

    def wake_runners(self, n: int) -> None:
        """Unpark up to `n` idle runners. Work wakes a few at a time, and each runner that takes
        an item wakes one more while work remains (see `Executor.runner`): waking every idle
        runner for every claim cost more than no-op jobs themselves, as most found the buffer
        already empty."""
        idle = self.idle
        while n > 0 and idle:
            parked = idle.popleft()
            if not parked.done():
                parked.set_result(None)
                self.waking += 1
                n -= 1

    def clear(self) -> None:
        """Drop every job not started (stopping: they are released on exit, attempts unchanged)."""
        self.items.clear()
        self.count = 0

    def job_ids(self) -> set[int]:
        return {job.id for item in self.items for job in (item if isinstance(item, list) else (item,))}

    def remove(self, ids: set[int]) -> None:
        """Drop jobs that are no longer ours."""
        kept: collections.deque[Item] = collections.deque()
        for item in self.items:
            if isinstance(item, list):
                item = [job for job in item if job.id not in ids]
                if item:
                    kept.append(item)
            elif item.id not in ids:
                kept.append(item)
        self.items.clear()  # in place: runners hold a reference to it
        self.items.extend(kept)
        self.count = sum(len(item) if isinstance(item, list) else 1 for item in kept)


class OutcomeSink:
    """Finished, not yet written. `batch_of` and `lost` are filled and emptied in place: the
    executor holds them."""

    __slots__ = ("leased", "ready", "batch_of", "lost", "orphaned", "orphaned_batches")

    def __init__(self) -> None:
        self.leased: list[Finished] = []  # leased jobs finished, for the completer's next write
        # The completer has something to write. Set whenever `leased` is not empty (the completer
        # clears it as it takes the list), except while the completer backs off after a failed
        # write, which sets it again: an outcome added to a non-empty list need not set it.
        self.ready = asyncio.Event()
        self.batch_of: dict[int, HeldBatch] = {}  # job id -> its open held batch
        self.lost: dict[int, Job] = {}  # running jobs of held batches lost with their connection
        self.orphaned: list[Finished] = []  # finished jobs of held batches lost with their connection
        self.orphaned_batches: list[int] = []  # those batches, to forget once the database answers

    @property
    def orphans(self) -> bool:
        """Outcomes of lost held batches wait to be written (the claimer waits for them)."""
        return bool(self.orphaned or self.orphaned_batches)

    def put_one(self, finished: Finished) -> None:
        """Route one finished job: to its open held batch, else to the completer (as an orphan
        if its held batch was lost with its connection)."""
        job_id = finished.id
        if self.lost and self.lost.get(job_id) is job_of(finished):
            del self.lost[job_id]  # its batch is gone: the job is ready again in the database
            self.orphaned.append(finished)
            self.ready.set()
            return
        batch = self.batch_of.get(job_id)
        if batch is not None:
            batch.add(finished)
            return
        if not self.leased:  # see `ready`: set when the list stops being empty
            self.ready.set()
        self.leased.append(finished)

    def put(self, finished: Sequence[Finished]) -> None:
        for one in finished:
            self.put_one(one)


class Shared:
    """State more than one role touches; each field says who writes it."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.queue = config.queue
        self.buffer = JobBuffer()
        self.sink = OutcomeSink()
        # Every job claimed and not yet recorded. Claimer adds; completer, holder, executor
        # (late rate-limited jobs given back) and keeper (jobs taken during a silence) remove.
        self.claimed: dict[int, Job] = {}
        self.executing: dict[int, asyncio.Task[None]] = {}  # executor: job id -> runner executing it
        self.cancelling: set[int] = set()  # keeper adds, completer removes once recorded
        self.claims_started = 0  # claimer; the keeper's beat checks no claim raced it
        # Executor: handler runs finished (any outcome) and their summed seconds; the keeper's beat
        # reports both (sql/010_worker_throughput.sql), from which readers get the queue's throughput.
        self.runs = 0
        self.busy_seconds = 0.0
        self.claims_in_flight = 0
        self.rate_limited = False  # keeper (queue settings): claim no more than can start now
        self.suspects = False  # keeper, holder, claimer: suspect jobs wait to run alone (sql/008)
        self.wake = asyncio.Event()  # jobs may be ready: NOTIFY, a new listener, a stop
        self.slot_freed = asyncio.Event()  # a slot or a claim's room came free
        self.stopping = asyncio.Event()
        self.rng = random.Random()
        # The database link (every role reports; the keeper's beat is what says it is back).
        self.db_ok = False
        self.down_since: float | None = None  # monotonic time the database was lost, if it is
        self.up_since = time.monotonic()  # since when every call has been answered

    def db_lost(self, doing: str, exc: BaseException, **fields: Any) -> None:
        """One warning when the database goes away, debug lines while it stays away: an outage
        must not flood the log with a line per call (or a traceback per connection)."""
        self.db_ok = False
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("database connection lost; retrying, outcomes kept in memory",
                        extra={"while": doing, "error": repr(exc), **fields})
        else:
            log.debug("database still unreachable", extra={"while": doing, "error": repr(exc), **fields})

    def db_back(self) -> None:
        self.db_ok = True
        if self.down_since is not None:
            log.info("database connection back", extra={"down_seconds": round(time.monotonic() - self.down_since, 1),
                                                         "unwritten_outcomes": len(self.sink.leased)})
            self.down_since = None
            self.up_since = time.monotonic()

    def count_in_flight(self) -> None:
        metrics.IN_FLIGHT.labels(self.queue).set(len(self.claimed))

    async def sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Sleep up to `seconds`, less if `event` (by default: stopping) is set."""
        waiter = event if event is not None else self.stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), seconds)


def interval(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
