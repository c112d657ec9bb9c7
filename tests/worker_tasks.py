"""Tasks used by tests that run `shoal worker` as a real process (importable via PYTHONPATH)."""

from __future__ import annotations

import asyncio

from shoal import task
from shoal.tasks import Job


@task("test.sleep_ms")
async def sleep_ms(job: Job) -> None:
    await asyncio.sleep(job.payload.get("ms", 10) / 1000)


@task("test.die")
async def die(job: Job) -> None:
    """A poison job: it kills the worker process running it, every time."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@task("test.stamp")
async def stamp(job: Job) -> None:
    """Appends `<id> start <t>` and `<id> end <t>` lines to payload["path"]: the ground truth of
    what really ran, and when, outside the database that the tests judge."""
    import time

    path = job.payload["path"]
    _append(path, f"{job.id} start {time.time()}\n")
    await asyncio.sleep(job.payload.get("ms", 0) / 1000)
    _append(path, f"{job.id} end {time.time()}\n")


def _append(path: str, line: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small write with O_APPEND: lines never interleave
    finally:
        os.close(fd)
