"""`enqueue` and `enqueue_many` on a psycopg 3 connection: the sync twin of shoal.producer.

Same validation (shoal.validation), same SQL (shoal.queries), same COPY rows (shoal.copy_rows) and
the same trace context (shoal.tracing) as the async path: a job enqueued from a Django view and one
from an asyncio service are the same row, and the same bad input gets the same error. Only the
driver differs. On a connection in a transaction (or not in autocommit mode) the jobs are part of
the caller's transaction: they exist only if it commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from shoal import queries, tracing
from shoal.copy_rows import COPY_CHUNK, COPY_HEADER, COPY_TRAILER, CopyRows, no_unique_keys, plain_queue_names
from shoal.jobs import NewJob
from shoal.producer import COPY_MIN_BATCH, insert_args, one_args, unknown_queue_if_none
from shoal.sync._db import Connection, cursor, in_callers_transaction, translate_errors
from shoal.validation import Batch, Row, validate


def enqueue(conn: Connection, queue: str, task: str, payload: Any = None, *, priority: int = 0,
            run_at: datetime | None = None, delay: float | timedelta | None = None,
            max_attempts: int | None = None, unique_key: str | None = None) -> int:
    """Add one job and return its id (or the live job's id when `unique_key` is taken)."""
    return enqueue_many(conn, [NewJob(queue, task, payload, priority, run_at, delay, max_attempts, unique_key)])[0]


def enqueue_many(conn: Connection, jobs: Iterable[NewJob]) -> list[int]:
    """Add many jobs; ids in input order (existing ids for live unique keys).

    A batch of `COPY_MIN_BATCH` jobs or more without unique keys is written with COPY, otherwise
    with one call to shoal.enqueue_many, as on the async path.
    """
    batch = list(jobs)
    if len(batch) >= COPY_MIN_BATCH and no_unique_keys(batch):
        return _enqueue_copy(conn, batch)
    return _enqueue_insert(conn, validate(batch))


def _enqueue_insert(conn: Connection, batch: Batch) -> list[int]:
    """One round trip: queries.ENQUEUE_ONE for a single job without a unique key, else
    shoal.enqueue_many, as on the async path."""
    if not batch.rows:
        return []
    one = one_args(batch.rows[0]) if len(batch.rows) == 1 else None
    with translate_errors(len(batch.rows)), cursor(conn) as cur:
        if one is not None:
            cur.execute(queries.ENQUEUE_ONE, one)
            row = cur.fetchone()
            return [unknown_queue_if_none(None if row is None else row[0], one[0])]
        cur.execute(queries.ENQUEUE_MANY_TYPED, insert_args(batch))
        return [row[0] for row in cur.fetchall()]


def _enqueue_copy(conn: Connection, jobs: list[NewJob]) -> list[int]:
    """Reserve ids and read the defaults (shoal.enqueue_reserve), then COPY the rows in.

    In the caller's transaction every job is checked before the first statement, so that a
    ValidationError leaves it usable (as on the INSERT path). In our own transaction the jobs are
    checked and encoded chunk by chunk while PostgreSQL inserts the chunks before; a bad job ends
    the COPY early and its error rolls the transaction back. As shoal.producer does.
    """
    if in_callers_transaction(conn):
        batch = validate(jobs)
        return _reserve_and_copy(conn, jobs, batch.queues, batch.rows)
    queues = plain_queue_names(jobs)
    rows = None
    if queues is None:  # some queue is not a valid name: name the first bad job before any statement
        batch = validate(jobs)
        queues, rows = batch.queues, batch.rows
    with conn.transaction():
        return _reserve_and_copy(conn, jobs, queues, rows)


def _reserve_and_copy(conn: Connection, jobs: list[NewJob], queues: set[str], rows: list[Row] | None) -> list[int]:
    """`rows`: the jobs already checked and encoded, or None to check them on the way."""
    with cursor(conn) as cur:
        with translate_errors():
            try:
                cur.execute(queries.ENQUEUE_RESERVE_TYPED, (list(queues), len(jobs)))
            except Exception:
                if rows is None:
                    validate(jobs)  # a bad job is reported before an unknown queue, as on the INSERT path
                raise
            row = cur.fetchone()
        assert row is not None  # enqueue_reserve returns one row
        ids, default_run_at, queue_names, queue_attempts = row
        packer = CopyRows(ids, default_run_at, dict(zip(queue_names, queue_attempts, strict=True)),
                          tracing.current_context())
        with cur.copy(queries.ENQUEUE_COPY) as copy:
            copy.write(COPY_HEADER)
            for start in range(0, len(jobs), COPY_CHUNK):
                chunk = rows[start:start + COPY_CHUNK] if rows is not None else (
                    validate(jobs, start, start + COPY_CHUNK).rows)  # raising ends the COPY: we roll back
                copy.write(packer.pack(chunk))
            copy.write(COPY_TRAILER)
    return list(ids)
