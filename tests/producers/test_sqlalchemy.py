"""shoal.contrib.sqlalchemy: jobs in a Session's or Connection's transaction, sync (psycopg) and
async (asyncpg), against a real PostgreSQL: they exist only if the transaction commits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from producing import QUEUE, count
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from shoal import sync
from shoal.contrib import sqlalchemy as shoal_sa
from shoal.errors import UnknownQueueError, ValidationError
from shoal.jobs import NewJob

BIG = max(sync.COPY_MIN_BATCH, 1_000)


@pytest.fixture
def engine(qdb: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(qdb.replace("postgresql://", "postgresql+psycopg://", 1))
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
    yield eng
    eng.dispose()


@pytest.fixture
async def async_engine(qdb: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(qdb.replace("postgresql://", "postgresql+asyncpg://", 1))
    async with eng.begin() as c:
        await c.exec_driver_sql("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
    yield eng
    await eng.dispose()


def orders(pg: psycopg.Connection[Any]) -> int:
    row = pg.execute("SELECT count(*) FROM orders").fetchone()
    return int(row[0]) if row else -1


@pytest.mark.parametrize("size", [1, BIG], ids=["insert", "copy"])
def test_session_commit_and_rollback(engine: sa.Engine, pg: psycopg.Connection[Any], size: int) -> None:
    with Session(engine) as session:
        session.execute(sa.text("INSERT INTO orders (note) VALUES ('kept')"))
        ids = shoal_sa.enqueue_many(session, [NewJob(QUEUE, "t", {"n": n}) for n in range(size)])
        assert count(pg) == 0  # not yet committed
        session.commit()
    assert count(pg) == size == len(ids) and orders(pg) == 1
    with Session(engine) as session, pytest.raises(RuntimeError):
        with session.begin():
            shoal_sa.enqueue(session, QUEUE, "t", {"lost": True})  # the first statement of the transaction
            session.execute(sa.text("INSERT INTO orders (note) VALUES ('lost')"))
            raise RuntimeError("the view failed")
    assert count(pg) == size and orders(pg) == 1


def test_connection_autobegins_like_execute(engine: sa.Engine, pg: psycopg.Connection[Any]) -> None:
    with engine.connect() as conn:
        shoal_sa.enqueue(conn, QUEUE, "t")
        conn.rollback()
        shoal_sa.enqueue(conn, QUEUE, "t")
        conn.commit()
    with engine.connect() as conn:
        shoal_sa.enqueue(conn, QUEUE, "t")  # closed without commit: rolled back
    assert count(pg) == 1


def test_errors_are_the_core_ones(engine: sa.Engine, pg: psycopg.Connection[Any]) -> None:
    with Session(engine) as session:
        with pytest.raises(ValidationError) as err:
            shoal_sa.enqueue(session, QUEUE, "a b")
        assert err.value.field == "task"
        with pytest.raises(UnknownQueueError):
            shoal_sa.enqueue(session, "ghost", "t")
    with pytest.raises(TypeError, match="postgresql\\+psycopg"):
        shoal_sa.enqueue(sa.create_engine("sqlite://").connect(), QUEUE, "t")


@pytest.mark.parametrize("size", [1, BIG], ids=["insert", "copy"])
async def test_async_session_commit_and_rollback(async_engine: AsyncEngine, pg: psycopg.Connection[Any],
                                                 size: int) -> None:
    async with AsyncSession(async_engine) as session:
        ids = await shoal_sa.enqueue_many_async(session, [NewJob(QUEUE, "t", {"n": n}) for n in range(size)])
        await session.execute(sa.text("INSERT INTO orders (note) VALUES ('kept')"))
        assert count(pg) == 0
        await session.commit()
    assert count(pg) == size == len(ids) and orders(pg) == 1
    async with AsyncSession(async_engine) as session:
        await shoal_sa.enqueue_async(session, QUEUE, "t")  # the first statement: the transaction must be open
        await session.rollback()
    async with async_engine.connect() as conn:
        await shoal_sa.enqueue_async(conn, QUEUE, "t")
        await conn.rollback()
        job_id = await shoal_sa.enqueue_async(conn, QUEUE, "t", priority=4)
        await conn.commit()
    assert count(pg) == size + 1
    assert (sync.get_job(pg, job_id) or {})["priority"] == 4
