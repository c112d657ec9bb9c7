"""SQLAlchemy: enqueue jobs inside a Session's or Connection's transaction (`pip install 'shoal[sqlalchemy]'`).

Sync (`enqueue`, `enqueue_many`): an engine on psycopg 3 (`postgresql+psycopg://`); the jobs go
through the transaction's own DBAPI connection (shoal.sync). Async (`enqueue_async`,
`enqueue_many_async`): an AsyncEngine on asyncpg (`postgresql+asyncpg://`); the jobs go through the
raw asyncpg connection (shoal.producer). Either way they commit or roll back with the session.
"""

from __future__ import annotations

from shoal.extras import require_module_extra

require_module_extra("sqlalchemy", "shoal.contrib.sqlalchemy")

from collections.abc import Iterable  # noqa: E402
from typing import Any  # noqa: E402

import sqlalchemy  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from shoal import producer  # noqa: E402
from shoal.jobs import NewJob  # noqa: E402

__all__ = ["NewJob", "enqueue", "enqueue_async", "enqueue_many", "enqueue_many_async"]


def _driver(connection: sqlalchemy.Connection | AsyncConnection, expected: str) -> None:
    driver = connection.dialect.driver
    if connection.dialect.name != "postgresql" or driver != expected:
        raise TypeError(f"shoal.contrib.sqlalchemy needs a postgresql+{expected} engine here, "
                        f"not {connection.dialect.name}+{driver}")


def _psycopg_connection(bind: Session | sqlalchemy.Connection) -> Any:
    """The psycopg connection of `bind`'s transaction, begun as `execute` would begin it (so that
    the caller's commit commits the jobs and a rollback drops them)."""
    connection = bind.connection() if isinstance(bind, Session) else bind
    _driver(connection, "psycopg")
    if not connection.in_transaction():
        connection.begin()
    return connection.connection.driver_connection


def enqueue(bind: Session | sqlalchemy.Connection, queue: str, task: str, payload: Any = None,
            **options: Any) -> int:
    """Add one job in `bind`'s transaction; returns its id. `options` as shoal.sync.enqueue."""
    from shoal import sync  # psycopg: only the sync functions need it

    return sync.enqueue(_psycopg_connection(bind), queue, task, payload, **options)


def enqueue_many(bind: Session | sqlalchemy.Connection, jobs: Iterable[NewJob]) -> list[int]:
    """Add many jobs in `bind`'s transaction (COPY for large batches); ids in input order."""
    from shoal import sync

    return sync.enqueue_many(_psycopg_connection(bind), jobs)


async def _asyncpg_connection(bind: AsyncSession | AsyncConnection) -> Any:
    """The asyncpg connection of `bind`'s transaction, in it. SQLAlchemy's asyncpg adapter opens
    the asyncpg transaction at the first statement, not at begin(): if none ran yet, one does, or
    the jobs would autocommit whatever the session decides."""
    connection = await bind.connection() if isinstance(bind, AsyncSession) else bind
    _driver(connection, "asyncpg")
    if not connection.in_transaction():
        await connection.begin()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None  # None only once the connection is closed
    if not raw.is_in_transaction():
        await connection.exec_driver_sql("SELECT 1")
    return raw


async def enqueue_async(bind: AsyncSession | AsyncConnection, queue: str, task: str, payload: Any = None,
                        **options: Any) -> int:
    """Add one job in `bind`'s transaction; returns its id. `options` as shoal.enqueue."""
    return await producer.enqueue(await _asyncpg_connection(bind), queue, task, payload, **options)


async def enqueue_many_async(bind: AsyncSession | AsyncConnection, jobs: Iterable[NewJob]) -> list[int]:
    """Add many jobs in `bind`'s transaction (COPY for large batches); ids in input order."""
    return await producer.enqueue_many(await _asyncpg_connection(bind), jobs)
