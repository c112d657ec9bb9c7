"""Shared fixtures: one real PostgreSQL per test session, a fresh database per test.

With SHOAL_TEST_DATABASE_URL set, tests use that server (each test still gets its own
database, created from a migrated template); otherwise an embedded PostgreSQL from the
`pgserver` wheel is started in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from shoal.embedded import EmbeddedPostgres
from shoal.testing.postgres import embedded

TEMPLATE_DB = "shoal_template"


def _with_db(url: str, db: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server, or None when an external one is configured."""
    if os.environ.get("SHOAL_TEST_DATABASE_URL"):
        yield None
        return
    with embedded("shoal-test-pg-", fast_unsafe=True) as pg:
        yield pg


@pytest.fixture(scope="session")
def server_url(pg_server: EmbeddedPostgres | None) -> str:
    return os.environ.get("SHOAL_TEST_DATABASE_URL") or (pg_server.url if pg_server else "")


@pytest.fixture(scope="session")
def template_db(server_url: str) -> str:
    """A database with every migration applied, cloned per test (much faster than migrating)."""
    from shoal.migrate import migrate

    async def build() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await conn.close()
        await migrate(_with_db(server_url, TEMPLATE_DB))

    asyncio.run(build())
    return TEMPLATE_DB


@pytest.fixture
async def db_url(server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield _with_db(server_url, name)
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_url)
    try:
        yield c
    finally:
        await c.close()
