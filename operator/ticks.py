"""Firing one CronJob tick exactly once, whatever the number of operator replicas.

The tick is claimed by inserting (cron, tick) into ``shoal.cron_ticks`` with ``ON CONFLICT
DO NOTHING``, and the job is enqueued in the SAME transaction: either both commit or
neither does. A second replica (or this one after a restart) that reaches the same tick
finds the row and does nothing; a crash between claim and enqueue rolls both back, so the
tick is still fired by whoever comes next. An in-memory leader schedule cannot promise
this: a failover during a tick duplicates or loses it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from shoal import queries
from shoal.client import enqueue


@dataclass(frozen=True)
class TickJob:
    """What a tick enqueues."""

    queue: str
    task: str
    payload: Any
    priority: int = 0


@dataclass(frozen=True)
class Fired:
    outcome: Literal["enqueued", "already-fired", "skipped-forbid"]
    tick: dt.datetime
    job_id: int | None = None


def unique_key(cron_name: str, tick: dt.datetime) -> str:
    """The job's unique key: one live job per (CronJob, scheduled time)."""
    return f"cron:{cron_name}:{tick.astimezone(dt.UTC).isoformat()}"


async def fire_tick(conn: asyncpg.Connection, cron_name: str, tick: dt.datetime, job: TickJob, *,
                    forbid_overlap: bool) -> Fired:
    """Claim ``tick`` and enqueue its job atomically. With ``forbid_overlap`` a tick whose
    predecessor's job is still pending or running is claimed but enqueues nothing."""
    async with conn.transaction():
        await conn.execute(queries.CRON_LOCK, cron_name)
        if await conn.fetchval(queries.CRON_TICK_CLAIM, cron_name, tick) is None:
            return Fired("already-fired", tick)
        if forbid_overlap and await conn.fetchval(queries.CRON_LAST_JOB_LIVE, cron_name) is not None:
            return Fired("skipped-forbid", tick)
        job_id = await enqueue(conn, job.queue, job.task, job.payload, priority=job.priority,
                               unique_key=unique_key(cron_name, tick))
        await conn.execute(queries.CRON_TICK_SET_JOB, cron_name, tick, job_id)
        return Fired("enqueued", tick, job_id)


@dataclass(frozen=True)
class TickHistory:
    last_tick: dt.datetime | None
    last_job_tick: dt.datetime | None
    last_job_id: int | None


async def tick_history(db: asyncpg.Connection | asyncpg.Pool, cron_name: str) -> TickHistory:
    row = await db.fetchrow(queries.CRON_LAST_TICKS, cron_name)
    return TickHistory(row["last_tick"], row["last_job_tick"], row["last_job_id"])
