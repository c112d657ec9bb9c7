"""How shoal.sync talks through a psycopg connection it may not own (Django's, SQLAlchemy's).

Statements are those of shoal.queries, with PostgreSQL's own `$1` placeholders: a RawCursor sends
them as they are, so the async and sync producers share every statement. The connection may come
with its owner's adapters (Django loads timestamptz as naive datetimes when USE_TZ is off, and
jsonb as text): the cursor puts psycopg's standard loaders back for the types Shoal reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader
from psycopg.types.json import JsonbBinaryLoader, JsonbLoader

from shoal import validation

Connection = psycopg.Connection[Any]


def cursor(conn: Connection) -> psycopg.RawCursor[Any]:
    """A `$n`-placeholder cursor on `conn` reading timestamptz and jsonb as psycopg does by default."""
    cur: psycopg.RawCursor[Any] = psycopg.RawCursor(conn)
    cur.adapters.register_loader("timestamptz", TimestamptzLoader)
    cur.adapters.register_loader("timestamptz", TimestamptzBinaryLoader)
    cur.adapters.register_loader("jsonb", JsonbLoader)
    cur.adapters.register_loader("jsonb", JsonbBinaryLoader)
    return cur


def fetch(conn: Connection, query: str, *params: Any) -> list[dict[str, Any]]:
    """The rows of one statement as dicts (column name to value)."""
    with cursor(conn) as cur:
        cur.execute(query, params)
        if cur.description is None:
            return []
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def in_callers_transaction(conn: Connection) -> bool:
    """Whether statements on `conn` belong to its user's transaction: one is open, or the connection
    is not in autocommit mode (psycopg then opens one at the first statement, and the user commits)."""
    return not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


@contextlib.contextmanager
def translate_errors(jobs: int | None = None) -> Iterator[None]:
    """The database's refusals as the typed errors of the async path (shoal.validation decides)."""
    try:
        yield
    except psycopg.Error as exc:
        diag = exc.diag
        error = validation.database_refusal(exc.sqlstate, diag.message_primary or str(exc), diag.column_name,
                                            diag.message_hint, jobs)
        if error is None:
            raise
        raise error from None
