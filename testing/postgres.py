"""A throwaway PostgreSQL: the embedded one (the `embedded` extra's pgserver), or $SHOAL_DATABASE_URL."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg

from shoal.embedded import EmbeddedPostgres, start_embedded


@contextlib.contextmanager
def embedded(prefix: str, *, fast_unsafe: bool = False) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL in a fresh temporary folder, destroyed on exit."""
    pg = start_embedded(Path(tempfile.mkdtemp(prefix=prefix)) / "data", fast_unsafe=fast_unsafe)
    try:
        yield pg
    finally:
        pg.destroy()


@contextlib.contextmanager
def database(prefix: str, *, env: str = "SHOAL_DATABASE_URL", fast_unsafe: bool = False) -> Iterator[str]:
    """The URL in $``env`` when set, else an embedded PostgreSQL's (destroyed afterwards)."""
    url = os.environ.get(env)
    if url:
        yield url
        return
    with embedded(prefix, fast_unsafe=fast_unsafe) as pg:
        yield pg.url


@contextlib.asynccontextmanager
async def migrated_database(server_url: str, name: str) -> AsyncIterator[str]:
    """Database `name` on the server of `server_url`, made anew and migrated; its URL. Dropped on
    exit (a benchmark's own database: a run never inherits the last one's rows)."""
    from shoal.migrate import migrate

    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = server_url.rsplit("/", 1)[0] + "/" + name
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
