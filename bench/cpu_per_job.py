"""Where a drained job's time goes: CPU per job of the worker process and of PostgreSQL,
for held claims (one write per job, the default for short jobs) against leased claims
(`--no-held-claims`: two writes per job), alternating in one run on one server.

Enqueues N no-op jobs, starts one `shoal worker`, and over a few seconds of steady state
reads the CPU time used by the worker and by every PostgreSQL process. Usage:

    .venv/bin/python bench/cpu_per_job.py [--jobs 200000] [--concurrency 500] [--seconds 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
import psutil
from _local import database, spawn_worker

from shoal import client, queues
from shoal.client import NewJob
from shoal.migrate import migrate

MODES = {"leased": ["--no-held-claims"], "held": []}


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


async def measure(url: str, conn: asyncpg.Connection, args: argparse.Namespace, options: list[str]) -> dict[str, float]:
    await conn.execute("DELETE FROM shoal.jobs")
    for _ in range(0, args.jobs, 10_000):
        await client.enqueue_many(conn, [NewJob("cpu", "shoal.noop") for _ in range(10_000)])
    await conn.execute("VACUUM ANALYZE shoal.jobs")
    worker = spawn_worker(url, "cpu", args.concurrency, *options)
    await asyncio.sleep(1.5)  # past start-up and the first (always leased) claims
    wp = psutil.Process(worker.pid)
    w0, p0 = sum(wp.cpu_times()[:2]), postgres_cpu()
    n0, t0 = await conn.fetchval("SELECT count(*) FROM shoal.jobs"), time.perf_counter()
    await asyncio.sleep(args.seconds)
    n1, t1 = await conn.fetchval("SELECT count(*) FROM shoal.jobs"), time.perf_counter()
    w1, p1 = sum(wp.cpu_times()[:2]), postgres_cpu()
    worker.terminate()
    worker.wait()
    done = n0 - n1
    if n1 == 0:
        print("  (queue ran dry during the window: raise --jobs)")
    return {"rate": done / (t1 - t0), "worker_us": (w1 - w0) / done * 1e6, "pg_us": (p1 - p0) / done * 1e6}


async def main(args: argparse.Namespace) -> None:
    with database("shoal-cpu-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await queues.declare_queue(conn, "cpu")
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for round_no in range(args.rounds):
            for mode, options in MODES.items():
                r = await measure(url, conn, args, options)
                results[mode].append(r)
                print(f"round {round_no} {mode:6}: steady drain {r['rate']:,.0f} jobs/s; worker CPU "
                      f"{r['worker_us']:.1f} us/job; PostgreSQL CPU {r['pg_us']:.1f} us/job", flush=True)
        await conn.close()
        med = {mode: {k: statistics.median(r[k] for r in rs) for k in ("rate", "worker_us", "pg_us")}
               for mode, rs in results.items()}
        print(f"median: held {med['held']['rate']:,.0f} jobs/s vs leased {med['leased']['rate']:,.0f} jobs/s "
              f"({med['held']['rate'] / med['leased']['rate']:.2f}x); PostgreSQL CPU per job "
              f"{med['held']['pg_us']:.1f} vs {med['leased']['pg_us']:.1f} us; worker CPU per job "
              f"{med['held']['worker_us']:.1f} vs {med['leased']['worker_us']:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
