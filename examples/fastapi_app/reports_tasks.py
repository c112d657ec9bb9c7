"""The worker's side of the FastAPI example: `shoal worker --queue reports --tasks reports_tasks`."""

from __future__ import annotations

import asyncio

from shoal import Job, PermanentError, task


@task("reports.build")
async def build(job: Job) -> None:
    if job.payload["rows"] < 0:
        raise PermanentError("rows must be >= 0")  # fails at once, no retries
    await asyncio.sleep(job.payload["rows"] / 10_000)  # the real work would go here
