"""Tasks for Shoal's mixed workload (g), loaded by the real CLI worker:

    PYTHONPATH=bench/peers python -m shoal.cli worker --queue mixed --tasks shoal_tasks

`bench.flaky` prints "START <n> <attempt> <epoch s>" first thing, then fails on its first
attempt when n % 5 == 0 (20% of jobs), so Shoal retries it with its default backoff.
"""

from __future__ import annotations

import sys
import time

import shoal


@shoal.task("bench.flaky")
async def flaky(job: shoal.Job) -> None:
    n = job.payload["n"]
    sys.stdout.write(f"START {n} {job.attempt} {time.time()!r}\n")
    sys.stdout.flush()
    if n % 5 == 0 and job.attempt == 1:
        raise RuntimeError(f"job {n}: planned first-attempt failure")
