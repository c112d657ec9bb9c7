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
