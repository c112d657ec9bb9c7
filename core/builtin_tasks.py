"""Tasks every worker has, for demos, smoke tests and benchmarks."""

from __future__ import annotations

import asyncio

from shoal.errors import PermanentError
from shoal.tasks import Job, task


@task("shoal.noop")
async def noop(job: Job) -> None:
    """Does nothing: measures the queue itself."""


@task("shoal.sleep")
async def sleep(job: Job) -> None:
    """Sleeps payload["seconds"]: stands in for real work in demos and tests."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    seconds = payload.get("seconds", 1)
    if not isinstance(seconds, int | float) or seconds < 0:
        raise PermanentError(f"payload.seconds: must be a number >= 0, got {seconds!r}")
    await asyncio.sleep(seconds)
