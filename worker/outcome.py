"""What the worker's roles hand each other: claimed work and the outcome of running it.

Its own module so that held.py, the seams (state.py) and every role share these types without
importing one another.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from operator import attrgetter, countOf
from typing import TypeAlias

from shoal import failures
from shoal.backoff import retry_delay
from shoal.errors import PermanentError
from shoal.tasks import Job

# One unit of the job buffer: a job, or the jobs of one call of a batch task.
Item: TypeAlias = Job | list[Job]


class TracedJob(Job):
    """A claimed job enqueued with a trace context (sql/009_trace_context.sql): the executor
    runs it in a span that continues that trace (shoal.tracing). Jobs without one stay plain
    `Job`s, so an untraced job costs the executor one class check."""

    __slots__ = ("trace_context",)

    def __init__(self, id: int, queue: str, task: str, raw_payload: str, attempt: int, max_attempts: int,
                 scheduled: float | None, trace_context: str) -> None:
        super().__init__(id, queue, task, raw_payload, attempt, max_attempts, scheduled)
        self.trace_context = trace_context


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


def failure_outcome(job: Job, exc: BaseException, *, base: float, cap: float, rng: random.Random,
                    timeout: float | None = None) -> Outcome:
    """The outcome of an attempt that raised `exc`: a retry after `retry_delay`, or none after a
    PermanentError. `timeout`: the job's, named in the error of a TimeoutError."""
    # The traceback goes to the job's history: the one line alone rarely says why.
    error, tb = failures.describe(exc)
    if isinstance(exc, TimeoutError):  # its traceback still shows where the job was stuck
        error = f"TimeoutError: job timed out after {timeout}s"
    if isinstance(exc, PermanentError):
        return Outcome(job, "fail", error, None, tb)
    return Outcome(job, "fail", error, retry_delay(job.attempt, base=base, cap=cap, rng=rng), tb)


def outcome_columns(outcomes: list[Outcome]) -> tuple[list[int], list[int], list[str | None],
                                                      list[float | None], list[int], list[str | None]]:
    """Outcomes as shoal.record's arrays: ok ids, failed ids with their errors and retry delays,
    cancelled ids, then the failures' tracebacks (last: the argument sql/006 added). The leased
    and the held path write the same columns. All successes (the common case): one pass."""
    ok = [o.job.id for o in outcomes if o.kind == "ok"]
    if len(ok) == len(outcomes):
        return ok, [], [], [], [], []
    fails = [o for o in outcomes if o.kind == "fail"]
    return (ok, [o.job.id for o in fails], [o.error for o in fails], [o.delay for o in fails],
            [o.job.id for o in outcomes if o.kind == "cancel"], [o.traceback for o in fails])


_followups = attrgetter("job.followups")


def has_followups(outcomes: Iterable[Outcome]) -> bool:
    """Does a success among `outcomes` carry follow-up jobs? (Their write is another path.) A
    job has none unless its handler enqueued some: looked at in C first, one pass per write."""
    return any(map(_followups, outcomes)) and any(o.kind == "ok" and o.job.followups for o in outcomes)


_kind = attrgetter("kind")


def all_succeeded(outcomes: Collection[Outcome]) -> bool:
    """Is every one of `outcomes` a success? Counted in C, one pass per write."""
    return countOf(map(_kind, outcomes), "ok") == len(outcomes)
