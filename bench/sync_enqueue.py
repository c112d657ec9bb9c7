"""The sync producer (shoal.sync, psycopg 3) against the async one (shoal.client, asyncpg): one
50,000-job `enqueue_many` through COPY each, on the same database, in the same run.

Each round times both (in alternating order, from an empty table: TRUNCATE, not timed), after one
untimed warm-up round each; the medians give jobs/s and the ratio sync/async (the goal: >= 0.8).
Both share validation (shoal.validation) and the COPY row encoding (shoal.copy_rows): what differs
is the driver's COPY and the sync code's lack of overlap between encoding and sending.

    PYTHONSAFEPATH=1 .venv/bin/python bench/sync_enqueue.py [--jobs 50000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import asyncpg
import psycopg

from shoal import client, queues, sync
from shoal.client import NewJob
from shoal.migrate import migrate
from shoal.testing.postgres import database

QUEUE, TASK = "bench", "bench.noop"


def jobs(n: int) -> list[NewJob]:
    return [NewJob(QUEUE, TASK, {"n": i, "to": f"user{i}@example.com"}) for i in range(n)]


async def time_async(conn: asyncpg.Connection, n: int) -> float:
    await conn.execute("TRUNCATE shoal.jobs")
    batch = jobs(n)
    t0 = time.perf_counter()
    ids = await client.enqueue_many(conn, batch)
    seconds = time.perf_counter() - t0
    assert len(ids) == n
    return seconds


def time_sync(conn: psycopg.Connection[Any], n: int) -> float:
    conn.execute("TRUNCATE shoal.jobs")
    batch = jobs(n)
    t0 = time.perf_counter()
    ids = sync.enqueue_many(conn, batch)
    seconds = time.perf_counter() - t0
    assert len(ids) == n
    return seconds


async def main(args: argparse.Namespace) -> None:
    with database("shoal-sync-enqueue-", fast_unsafe=True) as url:
        await migrate(url)
        aconn = await asyncpg.connect(url)
        await queues.declare_queue(aconn, QUEUE)
        sconn = psycopg.connect(url, autocommit=True)
        await time_async(aconn, args.jobs)  # warm-up: statements prepared, caches filled
        time_sync(sconn, args.jobs)
        times: dict[str, list[float]] = {"async": [], "sync": []}
        for r in range(args.rounds):
            order = ("async", "sync") if r % 2 == 0 else ("sync", "async")
            for name in order:
                times[name].append(await time_async(aconn, args.jobs) if name == "async"
                                   else time_sync(sconn, args.jobs))
        await aconn.close()
        sconn.close()
    rate = {name: args.jobs / statistics.median(t) for name, t in times.items()}
    print(f"enqueue_many of {args.jobs:,} jobs through COPY, median of {args.rounds} rounds (jobs/s):")
    for name, t in times.items():
        print(f"  {name:>5} ({'asyncpg' if name == 'async' else 'psycopg 3'}): {rate[name]:>9,.0f}"
              f"   (min..max {args.jobs / max(t):,.0f}..{args.jobs / min(t):,.0f})")
    print(f"  ratio sync/async: {rate['sync'] / rate['async']:.2f}x (goal >= 0.80x)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(p.parse_args()))
