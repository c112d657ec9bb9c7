"""`shoal worker` as a real OS process."""

from __future__ import annotations

import os
import subprocess
import sys


def spawn_worker(url: str, queue: str, concurrency: int, *options: str) -> subprocess.Popen[bytes]:
    """``python -m shoal.cli worker`` on ``queue`` against ``url`` (warnings only on the console)."""
    env = {**os.environ, "SHOAL_DATABASE_URL": url}
    return subprocess.Popen([sys.executable, "-m", "shoal.cli", "--log-level", "warning", "worker",
                             "--queue", queue, "--concurrency", str(concurrency), *options], env=env)
