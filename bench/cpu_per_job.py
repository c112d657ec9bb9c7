"""Where a drained job's time goes: CPU per job of the worker process and of PostgreSQL.

Enqueues N no-op jobs, starts one `shoal worker`, and over a few seconds of steady state
reads the CPU time used by the worker and by every PostgreSQL process. Usage:

    .venv/bin/python bench/cpu_per_job.py [--jobs 200000] [--concurrency 500] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import psutil
from _local import database, spawn_worker

from shoal import client, queues
from shoal.client import NewJob
from shoal.migrate import migrate


def postgres_cpu() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    return total


async def main(args: argparse.Namespace) -> None:
    with database("shoal-cpu-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await queues.declare_queue(conn, "cpu")
        for _ in range(0, args.jobs, 10_000):
            await client.enqueue_many(conn, [NewJob("cpu", "shoal.noop") for _ in range(10_000)])
        await conn.execute("VACUUM ANALYZE shoal.jobs")
        worker = spawn_worker(url, "cpu", args.concurrency)
        await asyncio.sleep(1.0)  # past start-up
        wp = psutil.Process(worker.pid)
        w0, p0 = sum(wp.cpu_times()[:2]), postgres_cpu()
        n0, t0 = await conn.fetchval("SELECT count(*) FROM shoal.jobs"), time.perf_counter()
        await asyncio.sleep(args.seconds)
        n1, t1 = await conn.fetchval("SELECT count(*) FROM shoal.jobs"), time.perf_counter()
        w1, p1 = sum(wp.cpu_times()[:2]), postgres_cpu()
        worker.terminate()
        worker.wait()
        await conn.close()
        done = n0 - n1
        print(f"steady drain {done / (t1 - t0):,.0f} jobs/s; worker CPU {(w1 - w0) / done * 1e6:.1f} us/job; "
              f"PostgreSQL CPU {(p1 - p0) / done * 1e6:.1f} us/job")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
