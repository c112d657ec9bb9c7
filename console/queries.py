"""What the console reads: queue overview, job pages, one job with its history, lookups.

Every read is bounded so that a page stays fast at 10M jobs: counts come from the core's capped
and estimated counting (`shoal stats`'s), and job pages from one of the existing indexes with a
keyset cursor, scanning at most SCAN_LIMIT index entries per page (filters that the index
cannot apply, like a task, may then leave a page short, with a cursor to go on from).
The SQL is in console/sql/, one file per statement, always with parameters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import asyncpg

from shoal import failures, manage, queries, queues
from shoal.config import STALE_AFTER
from shoal.console import cursor, timing
from shoal.console.filters import FINISHED, JobFilter

SCAN_LIMIT = 10_000  # index entries read per page at most: well under 100 ms at 10M jobs (docs/console.md)
# Keys before every row of each ordering (no `IS NULL OR` in the SQL: see console/sql/jobs_finished.sql).
NEVER, FOREVER = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)  # -infinity, infinity
MAX_ID = 2**63 - 1
FIRST_PENDING = (32768, NEVER, 0)


@cache
def sql(name: str) -> str:
    """The statement in console/sql/<name>.sql."""
    return resources.files("shoal.console").joinpath("sql", f"{name}.sql").read_text()


@dataclass
class Page:
    """One page of jobs. `partial`: the scan limit stopped the page short, so more may exist
    after `next_cursor` even though this page has fewer rows than asked."""

    jobs: list[dict[str, Any]]
    next_cursor: str | None
    partial: bool
    kind: str


def ordering(f: JobFilter) -> str:
    """Which index serves these filters (console/cursor.py KEYS)."""
    if f.queue and f.state == "pending":
        return "pending"
    if f.queue and f.state in FINISHED:
        return "finished"
    if f.queue and f.state == "running":
        return "running"
    return "id"


async def list_jobs(pool: asyncpg.Pool, f: JobFilter) -> Page:
    """A page of jobs matching `f`, after its cursor."""
    kind = ordering(f)
    key = cursor.decode(kind, f.cursor) if f.cursor else None
    tail = (SCAN_LIMIT, f.limit + 1)
    if kind == "pending":
        p, r, i = key or FIRST_PENDING
        args: tuple[Any, ...] = (f.queue, p, r, i, f.task, f.since, f.until, *tail)
    elif kind == "finished":
        at, i = key or (FOREVER, MAX_ID)
        args = (f.queue, f.state, at, i, f.task, f.since or NEVER, f.until or FOREVER, *tail)
    elif kind == "running":
        args = (f.queue, key[0] if key else MAX_ID, f.task, f.since, f.until, *tail)
    else:
        args = (key[0] if key else MAX_ID, f.queue, f.state, f.task, f.since, f.until, *tail)
    with timing.db():
        rows = await pool.fetch(sql(f"jobs_{'by_id' if kind == 'id' else kind}"), *args)
    matched = [r for r in rows if r["matched"]]
    if len(matched) > f.limit:
        page = matched[:f.limit]
        return Page([_row(r) for r in page], cursor.encode(kind, page[-1]), False, kind)
    if rows and rows[-1]["rn"] == SCAN_LIMIT:
        return Page([_row(r) for r in matched], cursor.encode(kind, rows[-1]), True, kind)
    return Page([_row(r) for r in matched], None, False, kind)


def _row(r: asyncpg.Record) -> dict[str, Any]:
    return {k: _plain(v) for k, v in r.items() if k not in ("matched", "rn")}


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


async def job(pool: asyncpg.Pool, job_id: int) -> dict[str, Any] | None:
    """The job and every failed attempt's error and traceback (shoal.job_errors), as `shoal jobs
    show --json` gives them; None when there is no such job."""
    with timing.db():
        async with pool.acquire() as conn:
            row = await manage.get_job(conn, job_id)
            if row is None:
                return None
            errors = await manage.job_history(conn, job_id)
    return failures.job_json(row, errors)


async def lookup(pool: asyncpg.Pool, text: str) -> list[dict[str, Any]]:
    """Jobs a user means by `text`: the job with that id, or the live jobs with that unique key."""
    text = text.strip()
    found: list[dict[str, Any]] = []
    with timing.db():
        if text.isdigit() and int(text) < 2**63:
            row = await pool.fetchrow(queries.JOB_GET, int(text))
            if row:
                found.append({"id": row["id"], "queue": row["queue"]})
        if text:
            found += [dict(r) for r in await pool.fetch(sql("lookup_unique"), text)]
    return found


async def overview(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Per queue: counts by state (exact to the core's cap, estimated past it), throughput,
    flow control, pause, live workers and the oldest ready job's age."""
    with timing.db():
        async with pool.acquire() as conn:
            configs = await queues.list_queues(conn)
            counts = {c.queue: c for c in await queues.state_counts(conn)}
            health = {q.name: await conn.fetchrow(queries.QUEUE_HEALTH, q.name, STALE_AFTER) for q in configs}
    out = []
    for q in configs:
        c, h = counts.get(q.name), health[q.name]
        states = {s: {"n": getattr(c, s), "kind": c.kind(s), "shown": c.shown(s)} if c else
                  {"n": 0, "kind": "exact", "shown": "0"} for s in queues.STATES}
        out.append({
            "name": q.name, "paused": q.paused, "counts": states,
            # Handler runs (any outcome) of the live workers between their last two heartbeats.
            "throughput_per_minute": h["runs_per_second"] * 60.0, "throughput_reporting": h["reporting"],
            "concurrency_limit": q.concurrency_limit,
            "rate_limit": str(q.rate_limit) if q.rate_limit else None,
            "live_workers": h["live_workers"], "oldest_ready_age": h["oldest_ready_age"],
        })
    return out


async def ping(pool: asyncpg.Pool) -> None:
    """Raises unless the database answers within a second (for /healthz)."""
    with timing.db():
        await asyncio.wait_for(pool.fetchval("SELECT 1"), 1.0)
