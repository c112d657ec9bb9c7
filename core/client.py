"""Producing jobs and following them: enqueue, wait, cancel, retry.

Every function takes an asyncpg connection (or pool) first, so an application can enqueue
on its own connection inside its own transaction: the job commits or rolls back together
with the application's data. `Client` bundles a pool for the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from shoal import names, queries
from shoal.errors import JobNotFoundError, UnknownQueueError, ValidationError

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
_UNKNOWN_QUEUE = re.compile(r'unknown queue "([^"]*)"')


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
    state: str
    attempts: int | None = None
    error: str | None = None
    finished_at: datetime | None = None
    pruned: bool = False  # succeeded and already deleted by retention


@dataclass
class _Columns:
    queues: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    run_ats: list[datetime | None] = field(default_factory=list)
    max_attempts: list[int | None] = field(default_factory=list)
    unique_keys: list[str | None] = field(default_factory=list)


# One encoder for all payloads: json.dumps with options builds a new encoder on every call,
# which was a third of the client's time for a 50,000-job batch.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_payload(payload: Any, field_name: str = "payload") -> str:
    if payload is None:
        return "{}"
    try:
        return _ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field_name, f"payload is not JSON-serialisable ({exc}); pass dicts, lists, "
                              "strings, numbers, booleans or None") from exc


def _run_at(job: NewJob, where: str) -> datetime | None:
    if job.run_at is not None and job.delay is not None:
        raise ValidationError(f"{where}run_at", "give either run_at or delay, not both")
    if job.delay is not None:
        seconds = job.delay.total_seconds() if isinstance(job.delay, timedelta) else float(job.delay)
        if seconds < 0 or seconds != seconds:
            raise ValidationError(f"{where}delay", f"delay must be >= 0 seconds, got {job.delay!r}")
        return datetime.now(UTC) + timedelta(seconds=seconds) if seconds else None
    if job.run_at is not None and job.run_at.tzinfo is None:
        raise ValidationError(f"{where}run_at", "run_at must be timezone-aware, e.g. datetime.now(timezone.utc)")
    return job.run_at


def _columns(jobs: Sequence[NewJob]) -> _Columns:
    cols = _Columns()
    many = len(jobs) > 1
    valid_queues: set[str] = set()
    valid_tasks: set[str] = set()
    for i, job in enumerate(jobs):
        where = f"jobs[{i}]." if many else ""
        if not isinstance(job.queue, str) or job.queue not in valid_queues:  # check each name once
            valid_queues.add(names.queue_name(job.queue, f"{where}queue"))
        if not isinstance(job.task, str) or job.task not in valid_tasks:
            valid_tasks.add(names.task_name(job.task, f"{where}task"))
        if not isinstance(job.priority, int) or not -32768 <= job.priority <= 32767:
            raise ValidationError(f"{where}priority", f"priority must be an integer in -32768..32767, got {job.priority!r}")
        if job.max_attempts is not None and (not isinstance(job.max_attempts, int) or job.max_attempts < 1):
            raise ValidationError(f"{where}max_attempts", f"max_attempts must be >= 1, got {job.max_attempts!r}")
        if job.unique_key is not None and (not isinstance(job.unique_key, str) or not job.unique_key):
            raise ValidationError(f"{where}unique_key", "unique_key must be a non-empty string or None")
        cols.queues.append(job.queue)
        cols.tasks.append(job.task)
        cols.payloads.append(encode_payload(job.payload, f"{where}payload"))
        cols.priorities.append(job.priority)
        cols.run_ats.append(_run_at(job, where))
        cols.max_attempts.append(job.max_attempts)
        cols.unique_keys.append(job.unique_key)
    return cols


def _none_if_all(values: list[Any], default: Any) -> list[Any] | None:
    """An all-default column travels as NULL: unnest pads it, and we skip encoding 10k values."""
    return None if all(v == default for v in values) else values


@contextlib.contextmanager
def translate_errors() -> Any:
    """Turn the database's refusals into the typed errors the API documents."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == "SHQ01":
            m = _UNKNOWN_QUEUE.search(str(exc))
            raise UnknownQueueError(m.group(1) if m else "?") from None
        raise


async def enqueue_many(db: Executor, jobs: Iterable[NewJob]) -> list[int]:
    """Add many jobs in one round trip; ids in input order (existing ids for live unique keys)."""
    batch = list(jobs)
    if not batch:
        return []
    cols = _columns(batch)
    with translate_errors():
        rows = await db.fetch(
            queries.ENQUEUE_MANY,
            cols.queues,
            cols.tasks,
            cols.payloads,
            _none_if_all(cols.priorities, 0),
            _none_if_all(cols.run_ats, None),
            _none_if_all(cols.max_attempts, None),
            _none_if_all(cols.unique_keys, None),
        )
    return [r["id"] for r in rows]


async def enqueue(db: Executor, queue: str, task: str, payload: Any = None, *, priority: int = 0,
                  run_at: datetime | None = None, delay: float | timedelta | None = None,
                  max_attempts: int | None = None, unique_key: str | None = None) -> int:
    """Add one job and return its id (or the live job's id when `unique_key` is taken)."""
    ids = await enqueue_many(db, [NewJob(queue, task, payload, priority, run_at, delay, max_attempts, unique_key)])
    return ids[0]


async def cancel(db: Executor, ids: Sequence[int]) -> dict[int, str]:
    """Cancel jobs: pending ones at once; running ones are interrupted by their worker."""
    rows = await db.fetch(queries.JOBS_CANCEL, list(ids))
    return {r["id"]: ("cancelling" if r["state"] == "running" else r["state"]) for r in rows}


async def retry(db: Executor, ids: Sequence[int]) -> list[int]:
    """Run failed or cancelled jobs again, from attempt zero."""
    return [r["id"] for r in await db.fetch(queries.JOBS_RETRY, list(ids))]


async def get_job(db: Executor, job_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(queries.JOB_GET, job_id)
    return dict(row) if row else None


async def _final_results(conn: asyncpg.Connection, ids: set[int]) -> dict[int, JobResult]:
    out = {
        r["id"]: JobResult(r["id"], r["state"], r["attempts"], r["last_error"], r["finished_at"])
        for r in await conn.fetch(queries.JOBS_FINAL, list(ids))
    }
    missing = ids - out.keys() - {r["id"] for r in await conn.fetch(queries.JOBS_EXISTING, list(ids - out.keys()))}
    if missing:
        last_id = await conn.fetchval(queries.JOBS_LAST_ID)
        for job_id in missing:
            if job_id > last_id or job_id < 1:
                raise JobNotFoundError(f"job {job_id} does not exist")
            # Ids are never reused: an id we handed out whose row is gone was a succeeded job
            # removed by retention (keep_succeeded = 0 deletes on success).
            out[job_id] = JobResult(job_id, "succeeded", pruned=True)
    return out


async def wait(db: Executor, ids: Sequence[int], *, mode: str = "all", timeout: float | None = None,
               poll_interval: float = 1.0) -> dict[int, JobResult]:
    """Wait until all (mode="all") or any (mode="first") of `ids` reach a final state.

    Wakes on the `shoal_done` notifications that completions send; polls every
    `poll_interval` as a safety net for a notification lost to a reconnect.
    """
    wanted = {int(i) for i in ids}
    if not wanted:
        return {}
    pool_conn = await db.acquire() if isinstance(db, asyncpg.Pool) else None
    conn: asyncpg.Connection = pool_conn if pool_conn is not None else db  # type: ignore[assignment]
    woken = asyncio.Event()

    def on_done(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        if wanted.intersection(int(x) for x in payload.split(",") if x):
            woken.set()

    await conn.add_listener("shoal_done", on_done)
    try:
        async with asyncio.timeout(timeout):
            results: dict[int, JobResult] = {}
            while True:
                woken.clear()
                results.update(await _final_results(conn, wanted - results.keys()))
                if (mode == "first" and results) or results.keys() >= wanted:
                    return results
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), poll_interval)
    finally:
        with contextlib.suppress(Exception):
            await conn.remove_listener("shoal_done", on_done)
        if pool_conn is not None:
            await db.release(pool_conn)  # type: ignore[union-attr,attr-defined]


class Client:
    """A pool plus the functions above, for applications that do not manage connections."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, database_url: str, *, min_size: int = 1, max_size: int = 10) -> Client:
        return cls(await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size))

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(self, queue: str, task: str, payload: Any = None, *,
                      conn: asyncpg.Connection | None = None, **options: Any) -> int:
        """Add one job; pass `conn` to enqueue inside your own transaction."""
        return await enqueue(conn or self.pool, queue, task, payload, **options)

    async def enqueue_many(self, jobs: Iterable[NewJob], *, conn: asyncpg.Connection | None = None) -> list[int]:
        return await enqueue_many(conn or self.pool, jobs)

    async def wait_for(self, job_id: int, timeout: float | None = None) -> JobResult:
        return (await wait(self.pool, [job_id], timeout=timeout))[job_id]

    async def wait_for_all(self, ids: Sequence[int], timeout: float | None = None) -> dict[int, JobResult]:
        return await wait(self.pool, ids, mode="all", timeout=timeout)

    async def wait_for_first(self, ids: Sequence[int], timeout: float | None = None) -> JobResult:
        results = await wait(self.pool, ids, mode="first", timeout=timeout)
        return min(results.values(), key=lambda r: r.finished_at or datetime.max.replace(tzinfo=UTC))

    async def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        return await cancel(self.pool, ids)

    async def retry(self, ids: Sequence[int]) -> list[int]:
        return await retry(self.pool, ids)

    async def get_job(self, job_id: int) -> dict[str, Any] | None:
        return await get_job(self.pool, job_id)
