"""Tasks of the `shoal worker` that test_prometheus_live.py scrapes (imported by the worker
process through PYTHONPATH): one that succeeds, one that always fails (so retries and
failures get series), and one that runs until it is cancelled."""

from __future__ import annotations

import asyncio

from shoal import task
from shoal.tasks import Job


@task("live.ok")
async def ok(job: Job) -> None:
    await asyncio.sleep(0.005)


@task("live.flaky")
async def flaky(job: Job) -> None:
    raise RuntimeError("live.flaky fails on purpose")


@task("live.slow")
async def slow(job: Job) -> None:
    await asyncio.sleep(120)
