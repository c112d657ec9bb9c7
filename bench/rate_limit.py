"""Rate-limit accuracy: N worker processes compete for one rate-limited queue.

Prints, for every 1-period sliding window anchored at a start, the busiest window's count
against the limit, and the achieved mean rate. Usage:

    .venv/bin/python bench/rate_limit.py [--limit 100] [--period 1] [--jobs 2000] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import asyncpg

from shoal import client, queues
from shoal.client import NewJob
from shoal.migrate import migrate
from shoal.ratelimit import RateLimit
from shoal.testing.postgres import database
from shoal.testing.workers import spawn_worker


async def main(args: argparse.Namespace) -> None:
    with database("shoal-rl-") as url:
        await measure(url, args)


async def measure(url: str, args: argparse.Namespace) -> None:
    await migrate(url)
    conn = await asyncpg.connect(url)
    await conn.execute("DELETE FROM shoal.jobs WHERE queue = 'rl-bench'")
    await queues.declare_queue(conn, "rl-bench", rate_limit=RateLimit(args.limit, args.period),
                               keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("rl-bench", "shoal.noop") for _ in range(args.jobs)])
    procs = [spawn_worker(url, "rl-bench", 50) for _ in range(args.workers)]
    started = time.monotonic()
    try:
        while await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'rl-bench' "
                                  "AND state <> 'succeeded'"):
            done = await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'rl-bench' "
                                       "AND state = 'succeeded'")
            print(f"  {done}/{args.jobs} done after {time.monotonic() - started:.0f}s", file=sys.stderr)
            await asyncio.sleep(1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    starts = [r["t"] for r in await conn.fetch(
        "SELECT extract(epoch FROM started_at)::float8 AS t FROM shoal.jobs WHERE queue = 'rl-bench' "
        "ORDER BY started_at")]
    workers = await conn.fetchval("SELECT count(DISTINCT worker_id) FROM shoal.jobs WHERE queue = 'rl-bench'")
    await conn.close()
    j, counts = 0, []
    for i, t in enumerate(starts):
        while j < len(starts) and starts[j] < t + args.period:
            j += 1
        counts.append(j - i)
    span = starts[-1] - starts[0]
    fixed = [sum(1 for t in starts if starts[0] + k * args.period <= t < starts[0] + (k + 1) * args.period)
             for k in range(int(span // args.period))]
    print(f"limit {args.limit}/{args.period}s, {args.jobs} jobs, {args.workers} worker processes "
          f"({workers} distinct workers started jobs)")
    print(f"busiest sliding window (anchored at every start): {max(counts)} starts, limit {args.limit}")
    print(f"consecutive full windows: median {statistics.median(fixed)}, min {min(fixed)}, max {max(fixed)}")
    # The first window may hold a full burst; after it, starts are paced by the limit.
    rate = (len(starts) - args.limit) / span * args.period
    print(f"achieved {rate:.1f} starts per period after the first burst ({rate / args.limit:.1%} of the limit)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--period", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
