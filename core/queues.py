"""The queue registry: declaring queues and their flow control, pausing, counting.

A job can only be added to a declared queue. Declaring is idempotent and also updates:
the operator calls it on every reconcile with the Queue resource's full spec, the CLI
with just the options a user typed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class StateCounts:
    queue: str
    ready: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int

    @property
    def pending(self) -> int:
        return self.ready + self.scheduled


async def state_counts(db: asyncpg.Connection | asyncpg.Pool, queue: str | None = None) -> list[StateCounts]:
    """Jobs by state for `shoal stats`: a full count, for humans, not for the autoscaler."""
    return [StateCounts(**dict(r)) for r in await db.fetch(queries.STATE_COUNTS, queue)]


async def ready_and_running(db: asyncpg.Connection | asyncpg.Pool, queue: str, cap: int) -> tuple[int, int]:
    """Capped, index-driven counts: cheap enough to run every second per queue."""
    row = await db.fetchrow(queries.READY_AND_RUNNING, queue, cap)
    return int(row["ready"]), int(row["running"])
