"""`Client`: the sync producer for applications that do not manage connections (scripts, Flask,
a Django management command), the twin of shoal.Client on psycopg 3.

It keeps a few autocommit connections for reuse (one per concurrent thread, at most `max_size`):
every call takes one, so threads may share a client, and a long `wait_for` does not hold up the
enqueues of other threads. Pass `conn=` to enqueue inside your own transaction instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from shoal.jobs import JobResult, NewJob
from shoal.sync import producer, waiting
from shoal.sync._db import Connection


class Client:
    """Connections to one database plus the functions of shoal.sync."""

    def __init__(self, database_url: str, *, max_size: int = 10, connect_timeout: float = 10.0) -> None:
        self.database_url = database_url
        self._connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)
        self._closed = False

    @classmethod
    def connect(cls, database_url: str, *, max_size: int = 10) -> Client:
        """A client whose first connection is open (so a bad URL fails here, not at the first job)."""
        client = cls(database_url, max_size=max_size)
        with client.connection():
            pass
        return client

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """One of the client's connections (autocommit), for the duration of the block."""
        if self._closed:
            raise RuntimeError("the shoal.sync.Client is closed")
        if not self._slots.acquire(timeout=self._connect_timeout * 3):
            raise TimeoutError("no connection of the shoal.sync.Client became free")
        conn = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=int(self._connect_timeout))
            yield conn
        finally:
            if conn is not None:
                healthy = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                if healthy and not self._closed:
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, queue: str, task: str, payload: Any = None, *, conn: Connection | None = None,
                **options: Any) -> int:
        """Add one job; pass `conn` to enqueue inside your own transaction."""
        if conn is not None:
            return producer.enqueue(conn, queue, task, payload, **options)
        with self.connection() as own:
            return producer.enqueue(own, queue, task, payload, **options)

    def enqueue_many(self, jobs: Iterable[NewJob], *, conn: Connection | None = None) -> list[int]:
        """Add many jobs (COPY from `COPY_MIN_BATCH` jobs up); ids in input order."""
        if conn is not None:
            return producer.enqueue_many(conn, jobs)
        with self.connection() as own:
            return producer.enqueue_many(own, jobs)

    def wait_for(self, job_id: int, timeout: float | None = None) -> JobResult:
        with self.connection() as conn:
            return waiting.wait(conn, [job_id], timeout=timeout)[job_id]

    def wait_for_all(self, ids: Sequence[int], timeout: float | None = None) -> dict[int, JobResult]:
        with self.connection() as conn:
            return waiting.wait(conn, ids, mode="all", timeout=timeout)

    def wait_for_first(self, ids: Sequence[int], timeout: float | None = None) -> JobResult:
        """The first of `ids` to finish (earliest finished_at among those final when the wait ends)."""
        with self.connection() as conn:
            results = waiting.wait(conn, ids, mode="first", timeout=timeout)
        return min(results.values(), key=lambda r: r.finished_at or datetime.max.replace(tzinfo=UTC))

    def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        with self.connection() as conn:
            return waiting.cancel(conn, ids)

    def retry(self, ids: Sequence[int]) -> list[int]:
        with self.connection() as conn:
            return waiting.retry(conn, ids)

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        with self.connection() as conn:
            return waiting.get_job(conn, job_id)
