"""`shoal stats` latency: the old full count against the capped/estimated counts, at N jobs.

    PYTHONSAFEPATH=1 .venv/bin/python bench/stats_latency.py                 # 1,000,000 jobs
    PYTHONSAFEPATH=1 .venv/bin/python bench/stats_latency.py --rows 10000000

Rows go in with INSERT ... SELECT generate_series (a million per statement) into three queues,
in a mix of states like a busy system keeping its history: 60% succeeded, 5% failed, 2% cancelled,
30% ready (4 priorities), 2% scheduled, 1% running. Each way of counting is timed client-side
(round trip included; medians) twice: right after the insert and ANALYZE (the visibility map not yet set,
so index-only scans still visit the heap), and after VACUUM. $SHOAL_DATABASE_URL is used when set
(a database `bench_stats_latency` is created on it and dropped), else an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg

from shoal.queues import state_counts
from shoal.testing.postgres import database, migrated_database

DB = "bench_stats_latency"
INSERT = """
INSERT INTO shoal.jobs (queue, task, max_attempts, state, priority, run_at, worker_id, finished_at)
SELECT 'q' || (i % 3), 'shoal.noop', 5, s.state::shoal.job_state, (i % 4)::smallint,
       CASE WHEN s.bucket BETWEEN 97 AND 98 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END,
       CASE WHEN s.state = 'running' THEN 'bench-worker' END,
       CASE WHEN s.state IN ('succeeded', 'failed', 'cancelled') THEN now() END
  FROM generate_series($1::bigint, $2::bigint) AS i,
       LATERAL (SELECT i % 100 AS bucket) b,
       LATERAL (SELECT b.bucket, CASE WHEN b.bucket < 60 THEN 'succeeded' WHEN b.bucket < 65 THEN 'failed'
                                      WHEN b.bucket < 67 THEN 'cancelled' WHEN b.bucket < 99 THEN 'pending'
                                      ELSE 'running' END AS state) s
"""


async def timed(fn, runs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), max(samples)


async def cold(url: str) -> float:
    """The first call on a new connection, as `shoal stats` makes it (plans not cached yet)."""
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        await state_counts(conn)
        return (time.perf_counter() - t0) * 1000
    finally:
        await conn.close()


async def measure(conn: asyncpg.Connection, url: str, label: str, old_runs: int) -> None:
    old_ms, old_max = await timed(lambda: state_counts(conn, exact=True), old_runs)
    cold_ms = statistics.median([await cold(url) for _ in range(5)])
    new_ms, new_max = await timed(lambda: state_counts(conn), 20)
    one_ms, _ = await timed(lambda: state_counts(conn, "q0"), 20)
    print(f"  {label:<22} old exact count {old_ms:7.0f} ms (max {old_max:.0f}, {old_runs} runs) | new: "
          f"{new_ms:5.1f} ms (max {new_max:.1f}), new connection {cold_ms:5.1f} ms, one queue {one_ms:.1f} ms",
          flush=True)


async def run(url: str, rows: int) -> None:
    async with migrated_database(url, DB) as db_url:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("SET synchronous_commit = off")
            for q in ("q0", "q1", "q2"):
                await conn.execute("INSERT INTO shoal.queues (name) VALUES ($1)", q)
            t0 = time.perf_counter()
            for start in range(1, rows + 1, 1_000_000):
                await conn.execute(INSERT, start, min(start + 999_999, rows))
            await conn.execute("ANALYZE shoal.jobs")
            print(f"{rows:,} jobs inserted and analysed in {time.perf_counter() - t0:.0f} s", flush=True)
            old_runs = 3 if rows > 2_000_000 else 5
            await measure(conn, db_url, "fresh (not vacuumed)", old_runs)
            await conn.execute("VACUUM ANALYZE shoal.jobs")
            await measure(conn, db_url, "after VACUUM", old_runs)
            for r in await state_counts(conn):
                print("  " + "  ".join(f"{s}={r.shown(s)}" for s in
                                       ("ready", "scheduled", "running", "succeeded", "failed", "cancelled"))
                      + f"  ({r.queue})")
        finally:
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with database("shoal-bench-stats-") as url:
        asyncio.run(run(url, args.rows))


if __name__ == "__main__":
    main()
