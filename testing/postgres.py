"""A throwaway PostgreSQL: the embedded one (the `embedded` extra's pgserver), or $SHOAL_DATABASE_URL."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
