"""The values the job API speaks: what a producer hands in, what a waiter gets back.

Kept apart from the code that moves them (shoal.enqueue, shoal.waiting, shoal.manage) so that
validation, tasks and the worker can name these types without importing any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias, get_args

import asyncpg

# Every function of the job API takes one of these first: a connection, so that an
# application can enqueue inside its own transaction, or a pool for the common case.
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
# The states a job does not leave by itself (a retry starts it again); `JobResult.state` is one.
# A waiter reads them from shoal.jobs (queries.JOBS_FINAL selects these three only), and a job
# pruned by retention reads as "succeeded" (only succeeded jobs can vanish before being waited on).
FinalState: TypeAlias = Literal["succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset(get_args(FinalState))


@dataclass
class NewJob:
    """One job to add. `delay` (seconds or timedelta) and `run_at` are mutually exclusive."""

    queue: str
    task: str
    payload: Any = None
    priority: int = 0
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    max_attempts: int | None = None
    unique_key: str | None = None


@dataclass(frozen=True)
class JobResult:
    """A job's final state as seen by a waiter."""

    id: int
    state: FinalState
    attempts: int | None = None
    error: str | None = None
    finished_at: datetime | None = None
    pruned: bool = False  # succeeded and already deleted by retention
