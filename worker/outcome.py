"""What the worker's roles hand each other: claimed work and how it finished.

Its own module so that held.py, the seams (state.py) and every role share these types without
importing one another.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter, countOf
from typing import TypeAlias

from shoal import failures
from shoal.backoff import retry_delay
from shoal.errors import PermanentError
from shoal.jobs import NewJob
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
    """How a job that did not succeed ended: a failure (retried after `delay`, or not) or a
    cancellation. A success has no Outcome: see `Finished`."""

    job: Job
    kind: str  # "fail" | "cancel"
    error: str | None = None
    delay: float | None = None  # None with kind "fail": no retry
    traceback: str | None = None  # kind "fail": the formatted traceback, bounded (shoal.failures)

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def followups(self) -> Sequence[NewJob]:
        """None: the follow-up jobs of an attempt that did not succeed are discarded."""
        return ()

    @property
    def final_failure(self) -> bool:
        return self.kind == "fail" and (self.delay is None or self.job.attempt >= self.job.max_attempts)


# One finished job, as the executor hands it to the outcome sink: the Job itself when it
# succeeded (the common case; building an object per success was ~0.13 us of a no-op job's
# ~1.7 us of Python in the worker), else the Outcome saying how it ended. Both have `id` and
# `followups`; `isinstance(f, Outcome)` tells them apart.
Finished: TypeAlias = Job | Outcome


def job_of(finished: Finished) -> Job:
    return finished.job if isinstance(finished, Outcome) else finished


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


def outcome_columns(finished: Collection[Finished]) -> tuple[list[int], list[int], list[str | None],
                                                           list[float | None], list[int], list[str | None]]:
    """Finished jobs as shoal.record's arrays: ok ids, failed ids with their errors and retry
    delays, cancelled ids, then the failures' tracebacks (last: the argument sql/006 added).
    The leased and the held path write the same columns. All successes (the common case): one
    pass in C to see it, one to take the ids."""
    if all_succeeded(finished):
        return [f.id for f in finished], [], [], [], [], []
    ok = [f.id for f in finished if not isinstance(f, Outcome)]
    fails = [f for f in finished if isinstance(f, Outcome) and f.kind == "fail"]
    return (ok, [o.job.id for o in fails], [o.error for o in fails], [o.delay for o in fails],
            [f.id for f in finished if isinstance(f, Outcome) and f.kind == "cancel"], [o.traceback for o in fails])


_followups = attrgetter("followups")


def has_followups(finished: Iterable[Finished]) -> bool:
    """Does a success among `finished` carry follow-up jobs? (Their write is another path.) A
    job has none unless its handler enqueued some, and an Outcome has none: looked at in C,
    one pass per write."""
    return any(map(_followups, finished))


def all_succeeded(finished: Collection[Finished]) -> bool:
    """Did every one of `finished` succeed (no Outcome among them)? Counted in C, one pass."""
    return countOf(map(type, finished), Outcome) == 0
