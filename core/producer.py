"""The producer's side: `enqueue` and `enqueue_many`, and the two ways a batch reaches the table.

A batch goes in with one call to shoal.enqueue_many (INSERT) or, when large, with a binary
COPY whose rows are encoded here. Both apply the same defaults and checks (shoal.validation);
which one a batch takes is a question of speed only. On a connection inside a transaction the
jobs commit or roll back with the application's data. Each job keeps the W3C trace context of
the span active at enqueue, if any (shoal.tracing; one per call, NULL without OpenTelemetry).

(Not `shoal.enqueue`: that name is the function, re-exported by the package.)
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shoal import names, queries, tracing
from shoal.jobs import Executor, NewJob
from shoal.validation import Batch, Row, translate_errors, validate

# Batches of at least this many jobs, none with a unique key, are written with COPY
# (`_enqueue_copy`); smaller ones with one call to shoal.enqueue_many. COPY costs three more
# round trips (BEGIN, reserve, COMMIT: ~0.7 ms on loopback) and saves a few microseconds per job;
# bench/enqueue_paths.py --sizes puts the break-even at 250-400 jobs on loopback, later over a
# network. Single jobs and small batches keep their one round trip.
COPY_MIN_BATCH = 500


def _none_if_all(values: list[Any], default: Any) -> list[Any] | None:
    """An all-default column travels as NULL: unnest pads it, and we skip encoding 10k values."""
    return None if all(v == default for v in values) else values


async def enqueue(db: Executor, queue: str, task: str, payload: Any = None, *, priority: int = 0,
                  run_at: datetime | None = None, delay: float | timedelta | None = None,
                  max_attempts: int | None = None, unique_key: str | None = None) -> int:
    """Add one job and return its id (or the live job's id when `unique_key` is taken)."""
    ids = await enqueue_many(db, [NewJob(queue, task, payload, priority, run_at, delay, max_attempts, unique_key)])
    return ids[0]


async def enqueue_many(db: Executor, jobs: Iterable[NewJob]) -> list[int]:
    """Add many jobs; ids in input order (existing ids for live unique keys).

    On a connection inside a transaction the jobs commit or roll back with it. A batch of
    `COPY_MIN_BATCH` jobs or more without unique keys is written with COPY, otherwise with one
    call to shoal.enqueue_many; both apply the same defaults and refuse unknown queues.
    """
    batch = list(jobs)  # a copy even of a list: the COPY path reads it across awaits
    if len(batch) >= COPY_MIN_BATCH and _no_unique_keys(batch):
        return await _enqueue_copy(db, batch)
    return await _enqueue_insert(db, validate(batch))


async def _enqueue_insert(db: Executor, batch: Batch) -> list[int]:
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
            tracing.current_context(),
        )
    return [r["id"] for r in rows]


# --- enqueue through COPY -------------------------------------------------------------------
# PostgreSQL's binary COPY format (see COPY in the PostgreSQL manual), built here rather than by
# asyncpg's copy_records_to_table: the columns are queries.ENQUEUE_COPY_COLUMNS, and everything in
# a row but the id and the payload is the same for every job of a (queue, task, priority, run_at,
# max_attempts), so it is encoded once (with the trace context, the same for the whole batch). Half the client's time per job of the generic encoder.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no extension
_COPY_TRAILER = struct.pack("!h", -1)
# Field count; id: length 8, int8; payload: length, jsonb format version 1 (then the JSON text).
_COPY_ROW_START = struct.Struct("!hiqiB").pack
_COPY_TEXT_LENGTH = struct.Struct("!i").pack
# priority: length 2, int2; run_at: length 8, microseconds since 2000-01-01 UTC; max_attempts: length 4, int4.
_COPY_ROW_END = struct.Struct("!ihiqii").pack
_COPY_NULL = struct.pack("!i", -1)  # trace_context: NULL, or its length and text
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Jobs per CopyData message: PostgreSQL inserts the first rows while the client encodes the next.
_COPY_CHUNK = 500


def _no_unique_keys(jobs: list[NewJob]) -> bool:
    """Whether COPY may take the batch: it inserts blindly, with no look-up of live unique keys."""
    try:
        return {job.unique_key for job in jobs} == {None}
    except TypeError:  # an unhashable key: let validation name it
        return False


class _CopyRows:
    """A batch's rows in binary COPY format, given the ids and defaults from shoal.enqueue_reserve."""

    def __init__(self, ids: list[int], default_run_at: datetime, default_attempts: dict[str, int],
                 trace_context: str | None = None) -> None:
        self.ids = ids
        if trace_context is None:
            self.trace_field = _COPY_NULL
        else:
            tc = trace_context.encode()
            self.trace_field = _COPY_TEXT_LENGTH(len(tc)) + tc
        self.default_run_at = default_run_at
        self.default_attempts = default_attempts
        self.packed = 0
        self._ends: dict[tuple[Any, ...], bytes] = {}

    def _end(self, queue: str, task: str, priority: int, run_at: datetime | None, max_attempts: int | None) -> bytes:
        q, t = queue.encode(), task.encode()
        run_at = self.default_run_at if run_at is None else run_at
        return b"".join((_COPY_TEXT_LENGTH(len(q)), q, _COPY_TEXT_LENGTH(len(t)), t, _COPY_ROW_END(
            2, priority, 8, (run_at - _PG_EPOCH) // _MICROSECOND,
            4, self.default_attempts[queue] if max_attempts is None else max_attempts), self.trace_field))

    def pack(self, rows: list[Row]) -> bytes:
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
            extend((_COPY_ROW_START(8, 8, job_id, len(payload) + 1, 1), payload, end))
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
        batch = validate(jobs)
        return await _reserve_and_copy(conn, jobs, batch.queues, batch.rows)
    queues = _plain_queue_names(jobs)
    rows = None
    if queues is None:  # some queue is not a valid name: name the first bad job before any statement
        batch = validate(jobs)
        queues, rows = batch.queues, batch.rows
    async with conn.transaction():
        return await _reserve_and_copy(conn, jobs, queues, rows)


async def _reserve_and_copy(conn: asyncpg.Connection, jobs: list[NewJob], queues: set[str],
                            rows: list[Row] | None) -> list[int]:
    """`rows`: the jobs already checked and encoded, or None to check them on the way."""
    with translate_errors():
        try:
            ids, default_run_at, queue_names, queue_attempts = await conn.fetchrow(
                queries.ENQUEUE_RESERVE, list(queues), len(jobs))
        except asyncpg.PostgresError:
            if rows is None:
                validate(jobs)  # a bad job is reported before an unknown queue, as on the INSERT path
            raise
    packer = _CopyRows(ids, default_run_at, dict(zip(queue_names, queue_attempts, strict=True)),
                       tracing.current_context())
    failed: list[Exception] = []

    async def data() -> AsyncIterator[bytes]:
        chunk = _COPY_HEADER
        for start in range(0, len(jobs), _COPY_CHUNK):
            if rows is not None:
                chunk += packer.pack(rows[start:start + _COPY_CHUNK])
            else:
                try:
                    chunk += packer.pack(validate(jobs, start, start + _COPY_CHUNK).rows)
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
