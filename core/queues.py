"""The queue registry: declaring queues and their flow control, pausing, counting.

A job can only be added to a declared queue. Declaring is idempotent and also updates:
the operator calls it on every reconcile with the Queue resource's full spec, the CLI
with just the options a user typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from shoal import names, queries
from shoal.errors import UnknownQueueError, ValidationError
from shoal.ratelimit import RateLimit


@dataclass(frozen=True)
class QueueConfig:
    name: str
    paused: bool = False
    concurrency_limit: int | None = None
    rate_limit: RateLimit | None = None
    max_attempts: int = 5
    keep_succeeded_seconds: int = 0
    keep_failed_seconds: int | None = None  # None: keep failed and cancelled jobs forever

    def validate(self) -> QueueConfig:
        names.queue_name(self.name, "name")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValidationError("concurrency_limit", "must be >= 1, or unset for no cap")
        if self.max_attempts < 1:
            raise ValidationError("max_attempts", "must be >= 1")
        if self.keep_succeeded_seconds < 0:
            raise ValidationError("keep_succeeded", "must be >= 0 seconds (0 deletes succeeded jobs at once)")
        if self.keep_failed_seconds is not None and self.keep_failed_seconds < 0:
            raise ValidationError("keep_failed", "must be >= 0 seconds, or unset to keep failed jobs forever")
        return self


def _from_row(row: Any) -> QueueConfig:
    rate = RateLimit(row["rate_limit"], row["rate_period_seconds"]) if row["rate_limit"] else None
    return QueueConfig(
        name=row["name"], paused=row["paused"], concurrency_limit=row["concurrency_limit"], rate_limit=rate,
        max_attempts=row["max_attempts"], keep_succeeded_seconds=row["keep_succeeded_seconds"],
        keep_failed_seconds=row["keep_failed_seconds"],
    )


async def get_queue(db: asyncpg.Connection | asyncpg.Pool, name: str) -> QueueConfig | None:
    row = await db.fetchrow(queries.QUEUE_GET, name)
    return _from_row(row) if row else None


async def list_queues(db: asyncpg.Connection | asyncpg.Pool) -> list[QueueConfig]:
    return [_from_row(r) for r in await db.fetch(queries.QUEUE_LIST)]


async def put_queue(db: asyncpg.Connection | asyncpg.Pool, config: QueueConfig) -> QueueConfig:
    """Create the queue or make it exactly `config`."""
    config.validate()
    rate = config.rate_limit
    await db.execute(
        queries.QUEUE_UPSERT, config.name, config.paused, config.concurrency_limit,
        rate.limit if rate else None, float(rate.period_seconds) if rate else None,
        config.max_attempts, float(config.keep_succeeded_seconds),
        float(config.keep_failed_seconds) if config.keep_failed_seconds is not None else None,
    )
    # Workers of a paused or throttled queue sleep; tell them something changed.
    await db.execute(queries.QUEUE_NOTIFY, config.name)
    return config


async def declare_queue(db: asyncpg.Connection | asyncpg.Pool, name: str, **changes: Any) -> QueueConfig:
    """Create the queue if needed, changing only the fields given (CLI semantics)."""
    names.queue_name(name)
    current = await get_queue(db, name) or QueueConfig(name=name)
    return await put_queue(db, replace(current, **changes))


async def set_paused(db: asyncpg.Connection | asyncpg.Pool, name: str, paused: bool) -> None:
    if await db.fetchval(queries.QUEUE_SET_PAUSED, name, paused) is None:
        raise UnknownQueueError(name)
    await db.execute(queries.QUEUE_NOTIFY, name)


async def delete_queue(db: asyncpg.Connection, name: str, *, delete_jobs: bool) -> None:
    """Forget a queue. Its jobs are deleted only when asked; otherwise the queue row stays
    too, so kept jobs still belong to a declared queue and can be inspected or resumed."""
    if not delete_jobs:
        return
    async with db.transaction():
        await db.execute(queries.QUEUE_DELETE_JOBS, name)
        await db.execute(queries.QUEUE_DELETE, name)


STATES = ("ready", "scheduled", "running", "succeeded", "failed", "cancelled")
# How far `shoal stats` counts exactly: an index walk of at most this many entries per state.
STATS_CAP = 10_000
# One row per (queue, state); sql/007_ops.sql says how each number is obtained.
QUEUE_STATS = "SELECT queue, state, n, kind FROM shoal.queue_stats($1, $2)"


@dataclass(frozen=True)
class StateCounts:
    """Jobs by state. `kinds` says how each number was obtained: 'exact'; 'estimated' (the
    planner's estimate, past the cap); or 'more_than' (more than the number given, the cap,
    when the statistics are too stale to estimate). A state missing from `kinds` is exact."""

    queue: str
    ready: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    kinds: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def pending(self) -> int:
        return self.ready + self.scheduled

    def kind(self, state: str) -> str:
        return self.kinds.get(state, "exact")

    @property
    def exact(self) -> bool:
        return all(self.kind(s) == "exact" for s in STATES)

    def shown(self, state: str) -> str:
        """The count as a human reads it: 123, ~1234567 (estimated) or >10000 (more than)."""
        value = getattr(self, state)
        return {"estimated": f"~{value}", "more_than": f">{value}"}.get(self.kind(state), str(value))


async def state_counts(db: asyncpg.Connection | asyncpg.Pool, queue: str | None = None, *,
                       cap: int = STATS_CAP, exact: bool = False) -> list[StateCounts]:
    """Jobs by state per queue, in constant time: exact up to `cap` per state, estimated beyond.

    `exact=True` counts every row (seconds at 10M jobs): for a human who asks, never for a loop.
    """
    if exact:
        return [StateCounts(**dict(r)) for r in await db.fetch(queries.STATE_COUNTS, queue)]
    by_queue: dict[str, dict[str, Any]] = {}
    for r in await db.fetch(QUEUE_STATS, queue, cap):
        row = by_queue.setdefault(r["queue"], {"queue": r["queue"], "kinds": {}})
        row[r["state"]] = int(r["n"])
        if r["kind"] != "exact":
            row["kinds"][r["state"]] = r["kind"]
    return [StateCounts(**row) for row in by_queue.values()]


async def ready_and_running(db: asyncpg.Connection | asyncpg.Pool, queue: str, cap: int) -> tuple[int, int]:
    """Capped, index-driven counts: cheap enough to run every second per queue."""
    row = await db.fetchrow(queries.READY_AND_RUNNING, queue, cap)
    return int(row["ready"]), int(row["running"])
