"""What the single-purpose bench scripts share: a throwaway database and `shoal worker` processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shoal.embedded import start_embedded


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    """$SHOAL_DATABASE_URL when set, else an embedded PostgreSQL destroyed afterwards."""
    url = os.environ.get("SHOAL_DATABASE_URL")
    if url:
        yield url
        return
    pg = start_embedded(Path(tempfile.mkdtemp(prefix=prefix)) / "data")
    try:
        yield pg.url
    finally:
        pg.destroy()


def spawn_worker(url: str, queue: str, concurrency: int, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SHOAL_DATABASE_URL": url}
    return subprocess.Popen([sys.executable, "-m", "shoal.cli", "--log-level", "warning", "worker",
                             "--queue", queue, "--concurrency", str(concurrency), *options], env=env)
