"""Time spent in the database per request, for the `Server-Timing` header the benchmark reads.

A context variable rather than an argument threaded through every call: each aiohttp request
runs in its own task, which copies the context, so concurrent requests never mix their sums.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_DB_SECONDS: ContextVar[list[float] | None] = ContextVar("shoal_console_db_seconds", default=None)


def start() -> list[float]:
    """Begin a request's tally; the returned list holds its database seconds."""
    tally = [0.0]
    _DB_SECONDS.set(tally)
    return tally


@contextlib.contextmanager
def db() -> Iterator[None]:
    """Count the time of the enclosed database work towards the current request."""
    started = time.perf_counter()
    try:
        yield
    finally:
        tally = _DB_SECONDS.get()
        if tally is not None:
            tally[0] += time.perf_counter() - started


def header(db_seconds: float, total_seconds: float) -> str:
    """`db;dur=<ms>, total;dur=<ms>`, the Server-Timing syntax browsers and the benchmark read."""
    return f"db;dur={db_seconds * 1000:.2f}, total;dur={total_seconds * 1000:.2f}"
