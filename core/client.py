"""Producing jobs and following them: enqueue, wait, cancel, retry.

Every function takes an asyncpg connection (or pool) first, so an application can enqueue
on its own connection inside its own transaction: the job commits or rolls back together
with the application's data. `Client` bundles a pool for the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from shoal import names, queries
from shoal.errors import JobNotFoundError
from shoal.validation import _Batch, _Row, _validate, translate_errors
from shoal.validation import encode_payload as encode_payload  # part of this module's API

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


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


# Batches of at least this many jobs, none with a unique key, are written with COPY
# (`_enqueue_copy`); smaller ones with one call to shoal.enqueue_many. COPY costs three more
# round trips (BEGIN, reserve, COMMIT: ~0.7 ms on loopback) and saves a few microseconds per job;
# bench/enqueue_paths.py --sizes puts the break-even at 250-400 jobs on loopback, later over a
# network. Single jobs and small batches keep their one round trip.
COPY_MIN_BATCH = 500


def _none_if_all(values: list[Any], default: Any) -> list[Any] | None:
    """An all-default column travels as NULL: unnest pads it, and we skip encoding 10k values."""
    return None if all(v == default for v in values) else values


async def enqueue_many(db: Executor, jobs: Iterable[NewJob]) -> list[int]:
    """Add many jobs; ids in input order (existing ids for live unique keys).

    On a connection inside a transaction the jobs commit or roll back with it. A batch of
    `COPY_MIN_BATCH` jobs or more without unique keys is written with COPY, otherwise with one
    call to shoal.enqueue_many; both apply the same defaults and refuse unknown queues.
    """
    batch = list(jobs)  # a copy even of a list: the COPY path reads it across awaits
    if len(batch) >= COPY_MIN_BATCH and _no_unique_keys(batch):
        return await _enqueue_copy(db, batch)
    return await _enqueue_insert(db, _validate(batch))


async def _enqueue_insert(db: Executor, batch: _Batch) -> list[int]:
    """One round trip: shoal.enqueue_many (sql/001_schema.sql) unnests the columns and INSERTs."""
    if not batch.rows:
        return []
    queues, tasks, payloads, priorities, run_ats, max_attempts, unique_keys = (
        list(column) for column in zip(*batch.rows, strict=True))
    with translate_errors(len(batch.rows)):
        rows = await db.fetch(
            queries.ENQUEUE_MANY,
            queues,
            tasks,
            payloads,
            _none_if_all(priorities, 0),
            _none_if_all(run_ats, None),
            _none_if_all(max_attempts, None),
            _none_if_all(unique_keys, None),
        )
    return [r["id"] for r in rows]


# --- enqueue through COPY -------------------------------------------------------------------
# PostgreSQL's binary COPY format (see COPY in the PostgreSQL manual), built here rather than by
# asyncpg's copy_records_to_table: the columns are queries.ENQUEUE_COPY_COLUMNS, and everything in
# a row but the id and the payload is the same for every job of a (queue, task, priority, run_at,
# max_attempts), so it is encoded once. Half the client's time per job of the generic encoder.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no extension
_COPY_TRAILER = struct.pack("!h", -1)
# Field count; id: length 8, int8; payload: length, jsonb format version 1 (then the JSON text).
_COPY_ROW_START = struct.Struct("!hiqiB").pack
_COPY_TEXT_LENGTH = struct.Struct("!i").pack
# priority: length 2, int2; run_at: length 8, microseconds since 2000-01-01 UTC; max_attempts: length 4, int4.
_COPY_ROW_END = struct.Struct("!ihiqii").pack
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Jobs per CopyData message: PostgreSQL inserts the first rows while the client encodes the next.
_COPY_CHUNK = 500


def _no_unique_keys(jobs: list[NewJob]) -> bool:
    try:
        return {job.unique_key for job in jobs} == {None}
    except TypeError:  # an unhashable key: let validation name it
        return False


class _CopyRows:
    """A batch's rows in binary COPY format, given the ids and defaults from shoal.enqueue_reserve."""

    def __init__(self, ids: list[int], default_run_at: datetime, default_attempts: dict[str, int]) -> None:
        self.ids = ids
        self.default_run_at = default_run_at
        self.default_attempts = default_attempts
        self.packed = 0
        self._ends: dict[tuple[Any, ...], bytes] = {}

    def _end(self, queue: str, task: str, priority: int, run_at: datetime | None, max_attempts: int | None) -> bytes:
        q, t = queue.encode(), task.encode()
        run_at = self.default_run_at if run_at is None else run_at
        return b"".join((_COPY_TEXT_LENGTH(len(q)), q, _COPY_TEXT_LENGTH(len(t)), t, _COPY_ROW_END(
            2, priority, 8, (run_at - _PG_EPOCH) // _MICROSECOND,
            4, self.default_attempts[queue] if max_attempts is None else max_attempts)))

    def pack(self, rows: list[_Row]) -> bytes:
        """The next rows of the batch (ids are handed out in order)."""
        parts: list[bytes] = []
        extend = parts.extend
        ends = self._ends
        ids = self.ids[self.packed:self.packed + len(rows)]
        for job_id, (queue, task, text, priority, run_at, max_attempts, _) in zip(ids, rows, strict=True):
            key = (queue, task, priority, run_at, max_attempts)
            end = ends.get(key)
            if end is None:
                end = ends[key] = self._end(queue, task, priority, run_at, max_attempts)
            payload = text.encode()
            extend((_COPY_ROW_START(7, 8, job_id, len(payload) + 1, 1), payload, end))
        self.packed += len(rows)
        return b"".join(parts)


def _plain_queue_names(jobs: list[NewJob]) -> set[str] | None:
    """The batch's distinct queues if every one is a valid name, else None."""
    try:
        queues = {job.queue for job in jobs}
    except TypeError:
        return None
    return queues if all(type(q) is str and names.QUEUE_NAME.fullmatch(q) for q in queues) else None


async def _enqueue_copy(db: Executor, jobs: list[NewJob]) -> list[int]:
    """Reserve ids and read the defaults (shoal.enqueue_reserve, sql/003_enqueue_copy.sql), then
    COPY the rows in with them: one connection, one transaction.

    In the caller's transaction every job is checked before the first statement, so that a
    ValidationError leaves that transaction as it was (as on the INSERT path) and no savepoint is
    needed: a database error aborts it, as on the INSERT path. In our own transaction, the jobs
    are checked and encoded chunk by chunk while PostgreSQL inserts the chunks before; a bad job
    ends the COPY early and its error rolls the transaction back.
    """
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _copy_on(conn, jobs)
    return await _copy_on(db, jobs)


async def _copy_on(conn: asyncpg.Connection, jobs: list[NewJob]) -> list[int]:
    if conn.is_in_transaction():
        batch = _validate(jobs)
        return await _reserve_and_copy(conn, jobs, batch.queues, batch.rows)
    queues = _plain_queue_names(jobs)
    rows = None
    if queues is None:  # some queue is not a valid name: name the first bad job before any statement
        batch = _validate(jobs)
        queues, rows = batch.queues, batch.rows
    async with conn.transaction():
        return await _reserve_and_copy(conn, jobs, queues, rows)


async def _reserve_and_copy(conn: asyncpg.Connection, jobs: list[NewJob], queues: set[str],
                            rows: list[_Row] | None) -> list[int]:
    """`rows`: the jobs already checked and encoded, or None to check them on the way."""
    with translate_errors():
        try:
            ids, default_run_at, queue_names, queue_attempts = await conn.fetchrow(
                queries.ENQUEUE_RESERVE, list(queues), len(jobs))
        except asyncpg.PostgresError:
            if rows is None:
                _validate(jobs)  # a bad job is reported before an unknown queue, as on the INSERT path
            raise
    packer = _CopyRows(ids, default_run_at, dict(zip(queue_names, queue_attempts, strict=True)))
    failed: list[Exception] = []

    async def data() -> AsyncIterator[bytes]:
        chunk = _COPY_HEADER
        for start in range(0, len(jobs), _COPY_CHUNK):
            if rows is not None:
                chunk += packer.pack(rows[start:start + _COPY_CHUNK])
            else:
                try:
                    chunk += packer.pack(_validate(jobs, start, start + _COPY_CHUNK).rows)
                except Exception as exc:  # end the COPY cleanly; raised below, which rolls back
                    failed.append(exc)
                    break
            yield chunk
            chunk = b""
        yield chunk + _COPY_TRAILER

    schema, table = queries.ENQUEUE_COPY_TABLE
    await conn.copy_to_table(table, schema_name=schema, columns=queries.ENQUEUE_COPY_COLUMNS,
                             source=data(), format="binary")
    if failed:
        raise failed[0]
    return list(ids)


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


def done_mentions(payload: str, wanted: set[int]) -> bool:
    """Whether a `shoal_done` notification may concern one of `wanted`. Payloads are
    comma-separated ids or "lo-hi" ranges (sql/004_held_claims.sql); a range can cover jobs
    that did not finish, so a True answer only means "look again"."""
    for part in payload.split(","):
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                low, high = int(lo), int(hi)
                if any(low <= job_id <= high for job_id in wanted):
                    return True
            elif part and int(part) in wanted:
                return True
        except ValueError:
            return True  # a payload we cannot read: look again rather than miss a wake-up
    return False


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
        if done_mentions(payload, wanted):
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


async def job_history(db: Executor, job_id: int) -> list[dict[str, Any]]:
    """Every failed attempt of a job, oldest first: attempt, at, worker_id, error, traceback.
    last_error keeps only the latest line; this is the "why did it fail?" of each attempt."""
    return [dict(r) for r in await db.fetch(queries.JOB_ERRORS, job_id)]
