"""The producer's side: `enqueue` and `enqueue_many`, and the two ways a batch reaches the table.

A batch goes in with one call to shoal.enqueue_many (INSERT) or, when large, with a binary
COPY whose rows shoal.copy_rows encodes (for shoal.sync's psycopg producer too). Both apply the same defaults and checks (shoal.validation);
which one a batch takes is a question of speed only. On a connection inside a transaction the
jobs commit or roll back with the application's data. Each job keeps the W3C trace context of
the span active at enqueue, if any (shoal.tracing; one per call, NULL without OpenTelemetry).

(Not `shoal.enqueue`: that name is the function, re-exported by the package.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shoal import queries, tracing
from shoal.copy_rows import COPY_CHUNK, COPY_HEADER, COPY_TRAILER, CopyRows, no_unique_keys, plain_queue_names
from shoal.errors import UnknownQueueError
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


def insert_args(batch: Batch) -> tuple[Any, ...]:
    """shoal.enqueue_many's arguments for a checked batch: its columns (an all-default one as NULL)
    and the current trace context. The psycopg producer (shoal.sync) sends the same."""
    queues, tasks, payloads, priorities, run_ats, max_attempts, unique_keys = (
        list(column) for column in zip(*batch.rows, strict=True))
    return (queues, tasks, payloads, _none_if_all(priorities, 0), _none_if_all(run_ats, None),
            _none_if_all(max_attempts, None), _none_if_all(unique_keys, None), tracing.current_context())


def one_args(row: Row) -> tuple[Any, ...] | None:
    """queries.ENQUEUE_ONE's arguments for a checked job, or None if it needs shoal.enqueue_many
    (a unique key: the live job's id may come back instead). The psycopg producer sends the same."""
    queue, task, payload, priority, run_at, max_attempts, unique_key = row
    if unique_key is not None:
        return None
    return (queue, task, payload, priority, run_at, max_attempts, tracing.current_context())


def unknown_queue_if_none(job_id: int | None, queue: str) -> int:
    """ENQUEUE_ONE returns no row for a queue that does not exist."""
    if job_id is None:
        raise UnknownQueueError(queue)
    return job_id


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
    if len(batch) >= COPY_MIN_BATCH and no_unique_keys(batch):
        return await _enqueue_copy(db, batch)
    return await _enqueue_insert(db, validate(batch))


async def _enqueue_insert(db: Executor, batch: Batch) -> list[int]:
    """One round trip: one statement for a single job without a unique key (queries.ENQUEUE_ONE),
    else shoal.enqueue_many (sql/001_schema.sql), which unnests the columns and INSERTs."""
    if not batch.rows:
        return []
    one = one_args(batch.rows[0]) if len(batch.rows) == 1 else None
    with translate_errors(len(batch.rows)):
        if one is not None:
            return [unknown_queue_if_none(await db.fetchval(queries.ENQUEUE_ONE, *one), one[0])]
        rows = await db.fetch(queries.ENQUEUE_MANY, *insert_args(batch))
    return [r["id"] for r in rows]


# --- enqueue through COPY -------------------------------------------------------------------
# The rows are encoded by shoal.copy_rows (shared with shoal.sync).


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
    queues = plain_queue_names(jobs)
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
    packer = CopyRows(ids, default_run_at, dict(zip(queue_names, queue_attempts, strict=True)),
                       tracing.current_context())
    failed: list[Exception] = []

    async def data() -> AsyncIterator[bytes]:
        chunk = COPY_HEADER
        for start in range(0, len(jobs), COPY_CHUNK):
            if rows is not None:
                chunk += packer.pack(rows[start:start + COPY_CHUNK])
            else:
                try:
                    chunk += packer.pack(validate(jobs, start, start + COPY_CHUNK).rows)
                except Exception as exc:  # end the COPY cleanly; raised below, which rolls back
                    failed.append(exc)
                    break
            yield chunk
            chunk = b""
        yield chunk + COPY_TRAILER

    schema, table = queries.ENQUEUE_COPY_TABLE
    await conn.copy_to_table(table, schema_name=schema, columns=queries.ENQUEUE_COPY_COLUMNS,
                             source=data(), format="binary")
    if failed:
        raise failed[0]
    return list(ids)
