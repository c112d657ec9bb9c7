"""Job timeouts without a timer per job.

`asyncio.timeout` schedules a timer per job and cancels it when the job ends: at tens of
thousands of short jobs a second that (with the coroutine around it) doubled the worker's CPU
per job. Here a job's deadline is an entry appended to a queue per timeout value: jobs of one
timeout end in the order they started, so each queue is sorted, and one timer (at the earliest
deadline still running) serves them all. The semantics are asyncio.timeout's: at the deadline
the runner's task is cancelled, and the CancelledError becomes a TimeoutError only if that
cancellation was the only one (a stop or a cancel request stays what it is).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

RUNNING, DONE, EXPIRED = 0, 1, 2
# Finished entries are dropped from the queues once there are this many, and more than running.
_COMPACT_AT = 1024


class Deadline:
    """One running job's deadline (loop time), for the runner task running it."""

    __slots__ = ("at", "task", "cancelling", "state")

    def __init__(self, at: float, task: asyncio.Task[None]) -> None:
        self.at = at
        self.task = task
        self.cancelling = task.cancelling()  # cancel requests before ours (asyncio.timeout's rule)
        self.state = RUNNING


class Deadlines:
    """The deadlines of running jobs, and the one timer that cancels the late ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, collections.deque[Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._size = 0  # entries in the queues
        self._finished = 0  # of them, done
        # A timer may fire up to the clock's resolution early (asyncio's own slack).
        self._slack = time.get_clock_info("monotonic").resolution

    def start(self, timeout: float, task: asyncio.Task[None]) -> Deadline:
        """A job starts in `task` and may run `timeout` seconds."""
        deadline = Deadline(self._loop.time() + timeout, task)
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = collections.deque()
        queue.append(deadline)
        self._size += 1
        if deadline.at < self._timer_at:
            self._arm(deadline.at)
        return deadline

    def finish(self, deadline: Deadline) -> None:
        """The job has ended (any way). If its deadline had passed and the job never saw the
        cancellation, the request is withdrawn, as asyncio.timeout does."""
        if deadline.state == RUNNING:
            deadline.state = DONE
            self._finished += 1
            if self._finished > _COMPACT_AT and self._finished * 2 > self._size:
                self._compact()
        elif deadline.state == EXPIRED:
            deadline.state = DONE
            deadline.task.uncancel()

    def timed_out(self, deadline: Deadline) -> bool:
        """On the job's CancelledError: did its deadline cause it, and nothing else? (Then the
        cancel request is withdrawn and the job failed with a TimeoutError.)"""
        if deadline.state != EXPIRED:
            return False
        deadline.state = DONE
        return deadline.task.uncancel() <= deadline.cancelling

    def __len__(self) -> int:
        """Entries kept (running, and finished ones not dropped yet)."""
        return self._size

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._expire)
        self._timer_at = at

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time() + self._slack
        following = math.inf
        for queue in self._queues.values():
            while queue:
                deadline = queue[0]
                if deadline.state != RUNNING:
                    queue.popleft()
                    self._size -= 1
                    self._finished -= 1
                elif deadline.at <= now:
                    queue.popleft()
                    self._size -= 1
                    deadline.state = EXPIRED
                    deadline.task.cancel()
                else:
                    following = min(following, deadline.at)
                    break
        if following < math.inf:
            self._arm(following)

    def _compact(self) -> None:
        for timeout, queue in self._queues.items():
            self._queues[timeout] = collections.deque(d for d in queue if d.state == RUNNING)
        self._size = sum(len(q) for q in self._queues.values())
        self._finished = 0
