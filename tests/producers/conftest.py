"""Fixtures of the producer tests: a migrated database with queues declared, and psycopg connections to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from producing import QUEUE

from shoal import queues


@pytest.fixture
async def qdb(db_url: str, conn: asyncpg.Connection) -> AsyncIterator[str]:
    """db_url with queues "q", "other" and "emails" (the Django example's) declared."""
    await queues.declare_queue(conn, QUEUE)
    await queues.declare_queue(conn, "other", max_attempts=7)
    await queues.declare_queue(conn, "emails")
    yield db_url


@pytest.fixture
def pg(qdb: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection (what shoal.sync.Client uses)."""
    with psycopg.connect(qdb, autocommit=True) as c:
        yield c


@pytest.fixture
def pg_tx(qdb: str) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection in its default mode: every statement inside a transaction the caller ends."""
    with psycopg.connect(qdb) as c:
        yield c

