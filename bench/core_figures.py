"""The core issue's two figures: one 50,000-job `enqueue_many` batch, and one `shoal worker`
process draining 50,000 `shoal.noop` jobs (timed from process start, start-up included).

    .venv/bin/python bench/core_figures.py [--jobs 50000] [--concurrency 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from shoal import client, queues
from shoal.client import NewJob
from shoal.migrate import migrate
from shoal.testing.postgres import database
from shoal.testing.workers import spawn_worker


async def main(args: argparse.Namespace) -> None:
    with database("shoal-core-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await queues.declare_queue(conn, "core")
        jobs = [NewJob("core", "shoal.noop", {"n": i}) for i in range(args.jobs)]
        started = time.perf_counter()
        await client.enqueue_many(conn, jobs)
        took = time.perf_counter() - started
        print(f"enqueue: one batch of {args.jobs:,} in {took:.3f}s = {args.jobs / took:,.0f} jobs/s")
        await conn.execute("VACUUM ANALYZE shoal.jobs")
        started = time.perf_counter()
        worker = spawn_worker(url, "core", args.concurrency)
        while True:  # poll the table: the finish line is "no job left", seen from outside
            if not await conn.fetchval("SELECT count(*) FROM shoal.jobs"):
                break
            await asyncio.sleep(0.01)
        took = time.perf_counter() - started
        print(f"drain: {args.jobs:,} shoal.noop jobs, one worker process, in {took:.3f}s "
              f"(process start-up included) = {args.jobs / took:,.0f} jobs/s")
        worker.terminate()
        worker.wait()
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
