"""Jobs as PostgreSQL binary COPY data, for the COPY path of both producers (asyncpg and psycopg).

PostgreSQL's binary COPY format (see COPY in the PostgreSQL manual) is built here rather than by a
driver's generic encoder: the columns are queries.ENQUEUE_COPY_COLUMNS, and everything in a row but
the id and the payload is the same for every job of a (queue, task, priority, run_at, max_attempts),
so it is encoded once (with the trace context, the same for the whole batch). Half the client's time
per job of asyncpg's generic encoder. Shared so that shoal.producer (asyncpg) and shoal.sync
(psycopg) write byte-identical rows: one encoder to keep right, whichever driver sends it.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from shoal import names
from shoal.jobs import NewJob
from shoal.validation import Row

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no extension
COPY_TRAILER = struct.pack("!h", -1)
# Field count; id: length 8, int8; payload: length, jsonb format version 1 (then the JSON text).
_ROW_START = struct.Struct("!hiqiB").pack
_TEXT_LENGTH = struct.Struct("!i").pack
# priority: length 2, int2; run_at: length 8, microseconds since 2000-01-01 UTC; max_attempts: length 4, int4.
_ROW_END = struct.Struct("!ihiqii").pack
_NULL = struct.pack("!i", -1)  # trace_context: NULL, or its length and text
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Jobs per CopyData message: PostgreSQL inserts the first rows while the client encodes the next.
COPY_CHUNK = 500


def no_unique_keys(jobs: list[NewJob]) -> bool:
    """Whether COPY may take the batch: it inserts blindly, with no look-up of live unique keys."""
    try:
        return {job.unique_key for job in jobs} == {None}
    except TypeError:  # an unhashable key: let validation name it
        return False


def plain_queue_names(jobs: list[NewJob]) -> set[str] | None:
    """The batch's distinct queues if every one is a valid name, else None (validate first then,
    so that the first bad job is named before any statement is sent)."""
    try:
        queues = {job.queue for job in jobs}
    except TypeError:
        return None
    return queues if all(type(q) is str and names.QUEUE_NAME.fullmatch(q) for q in queues) else None


class CopyRows:
    """A batch's rows in binary COPY format, given the ids and defaults from shoal.enqueue_reserve."""

    def __init__(self, ids: list[int], default_run_at: datetime, default_attempts: dict[str, int],
                 trace_context: str | None = None) -> None:
        self.ids = ids
        if trace_context is None:
            self.trace_field = _NULL
        else:
            tc = trace_context.encode()
            self.trace_field = _TEXT_LENGTH(len(tc)) + tc
        self.default_run_at = default_run_at
        self.default_attempts = default_attempts
        self.packed = 0
        self._ends: dict[tuple[Any, ...], bytes] = {}

    def _end(self, queue: str, task: str, priority: int, run_at: datetime | None, max_attempts: int | None) -> bytes:
        q, t = queue.encode(), task.encode()
        run_at = self.default_run_at if run_at is None else run_at
        return b"".join((_TEXT_LENGTH(len(q)), q, _TEXT_LENGTH(len(t)), t, _ROW_END(
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
            extend((_ROW_START(8, 8, job_id, len(payload) + 1, 1), payload, end))
        self.packed += len(rows)
        return b"".join(parts)
