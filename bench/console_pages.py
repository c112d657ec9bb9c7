"""The console's server time per page at N jobs (issue 17: every page < 100 ms at 10M jobs).

    PYTHONSAFEPATH=1 .venv/bin/python bench/console_pages.py                  # 10,000,000 jobs
    PYTHONSAFEPATH=1 .venv/bin/python bench/console_pages.py --rows 1000000

Rows go in with INSERT ... SELECT generate_series (a million per statement) into three queues in a
mix of states like a busy system keeping a week of history (60% succeeded, 5% failed with one
recorded error each, 2% cancelled, 30% ready, 2% scheduled, 1% running), five tasks of which one
is rare (1 job in 10,000), a unique key on every 10th job. Then VACUUM ANALYZE, a real
`shoal console` process, and each page requested 15 times: the server's own `Server-Timing: total`
(what the page costs the server, database included) and the client's wall time, medians and max.
$SHOAL_DATABASE_URL is used when set (a database `bench_console` is created on it and dropped),
else an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from shoal.testing.postgres import database, migrated_database

DB = "bench_console"
GOAL_MS = 100.0
RUNS = 15
INSERT = """
INSERT INTO shoal.jobs (queue, task, payload, max_attempts, attempts, state, priority, run_at, worker_id,
                        unique_key, last_error, created_at, started_at, finished_at)
SELECT 'q' || (i % 3),
       CASE WHEN i % 10000 = 7 THEN 'rare.task' ELSE 'task.' || (i % 4) END,
       jsonb_build_object('n', i), 5, CASE WHEN s.state = 'failed' THEN 5 ELSE 1 END,
       s.state::shoal.job_state, (i % 4)::smallint,
       CASE WHEN s.bucket BETWEEN 97 AND 98 THEN now() + interval '1 hour' ELSE t.created END,
       CASE WHEN s.state = 'running' THEN 'bench-worker' END,
       CASE WHEN i % 10 = 0 THEN 'key-' || i END,
       CASE WHEN s.state = 'failed' THEN 'ValueError: bad input ' || i END,
       t.created, t.created + interval '1 second',
       CASE WHEN s.state IN ('succeeded', 'failed', 'cancelled') THEN t.created + interval '2 seconds' END
  FROM generate_series($1::bigint, $2::bigint) AS i,
       LATERAL (SELECT now() - interval '7 days' * (1 - i::float8 / $3) AS created) t,
       LATERAL (SELECT i % 100 AS bucket) b,
       LATERAL (SELECT b.bucket, CASE WHEN b.bucket < 60 THEN 'succeeded' WHEN b.bucket < 65 THEN 'failed'
                                      WHEN b.bucket < 67 THEN 'cancelled' WHEN b.bucket < 99 THEN 'pending'
                                      ELSE 'running' END AS state) s
"""
ERRORS = """
INSERT INTO shoal.job_errors (job_id, attempt, worker_id, error, traceback)
SELECT id, attempts, 'bench-worker', last_error, 'Traceback (most recent call last):\n  ...\n' || last_error
  FROM shoal.jobs WHERE state = 'failed' AND id BETWEEN $1 AND $2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(url: str, rows: int) -> dict[str, int]:
    """Insert the jobs; returns ids the pages need (a failed job, a job with a unique key)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        for q in ("q0", "q1", "q2"):
            await conn.execute("INSERT INTO shoal.queues (name) VALUES ($1)", q)
        t0 = time.perf_counter()
        for start in range(1, rows + 1, 1_000_000):
            end = min(start + 999_999, rows)
            await conn.execute(INSERT, start, end, rows)
            await conn.execute(ERRORS, start, end)
            print(f"  {end:,} of {rows:,} jobs", flush=True)
        await conn.execute("VACUUM ANALYZE shoal.jobs")
        await conn.execute("VACUUM ANALYZE shoal.job_errors")
        print(f"{rows:,} jobs inserted, vacuumed and analysed in {time.perf_counter() - t0:.0f} s", flush=True)
        failed = await conn.fetchval("SELECT max(id) FROM shoal.jobs WHERE id < $1 AND state = 'failed'", rows // 2)
        keyed = await conn.fetchval("SELECT max(id) FROM shoal.jobs WHERE id < $1 AND unique_key IS NOT NULL "
                                    "AND state = 'pending'", rows // 2)  # a live key: what lookup finds
        return {"failed": failed, "keyed": keyed}
    finally:
        await conn.close()


@contextmanager
def console(url: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "SHOAL_DATABASE_URL": url, "PYTHONSAFEPATH": "1"}
    env.pop("SHOAL_CONSOLE_ADMIN_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "console", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("shoal console did not become healthy") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def get(base: str, path: str) -> tuple[float, float, bytes]:
    """One request: (server total ms from Server-Timing, client wall ms, body)."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=30) as resp:
        body = resp.read()
        timing = resp.headers.get("Server-Timing", "")
    wall = (time.perf_counter() - t0) * 1000
    found = re.search(r"total;dur=([0-9.]+)", timing)
    if not found:
        raise SystemExit(f"{path}: no Server-Timing total in the answer ({timing!r})")
    return float(found.group(1)), wall, body


def next_cursor(base: str, api_path: str, pages: int) -> str:
    """The cursor of page `pages + 1` of an API listing, following next_cursor like the browser."""
    import json
    from urllib.parse import quote

    cursor = ""
    for _ in range(pages):
        sep = "&" if "?" in api_path else "?"
        _, _, body = get(base, api_path + (f"{sep}cursor={quote(cursor)}" if cursor else ""))
        cursor = json.loads(body)["next_cursor"] or ""
    return quote(cursor)


def pages(base: str, ids: dict[str, int], since: str) -> list[tuple[str, str]]:
    deep = next_cursor(base, "/api/jobs?queue=q0&state=failed", 20)
    second = next_cursor(base, "/api/jobs", 1)
    return [
        ("overview", "/"),
        ("overview data", "/api/queues"),
        ("jobs, no filter", "/jobs"),
        ("jobs, page 2 (cursor)", f"/jobs?cursor={second}"),
        ("jobs q0 failed", "/jobs?queue=q0&state=failed"),
        ("jobs q0 failed, page 21", f"/jobs?queue=q0&state=failed&cursor={deep}"),
        ("jobs failed, all queues", "/jobs?state=failed"),
        ("jobs q1 ready", "/jobs?queue=q1&state=pending"),
        ("jobs q2 running", "/jobs?queue=q2&state=running"),
        ("jobs rare task", "/jobs?task=rare.task"),
        ("jobs q0 failed, time range", f"/jobs?queue=q0&state=failed&since={since}"),
        ("jobs data q0 failed", "/api/jobs?queue=q0&state=failed"),
        ("lookup by id", f"/jobs?lookup={ids['failed']}"),
        ("lookup by unique key", f"/jobs?lookup=key-{ids['keyed']}"),
        ("job detail (failed)", f"/jobs/{ids['failed']}"),
        ("job detail data", f"/api/jobs/{ids['failed']}"),
    ]


def measure(base: str, ids: dict[str, int], rows: int) -> bool:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3 * 86400))
    ok = True
    print(f"\n{'page':<30} {'server median':>13} {'server max':>10} {'client median':>13}   (ms, {RUNS} runs)")
    for name, path in pages(base, ids, since):
        get(base, path)  # warm: the server's pool and prepared statements
        samples = [get(base, path)[:2] for _ in range(RUNS)]
        server = statistics.median(s for s, _ in samples)
        worst = max(s for s, _ in samples)
        client = statistics.median(c for _, c in samples)
        mark = "ok" if server < GOAL_MS else "OVER"
        ok &= server < GOAL_MS
        print(f"{name:<30} {server:13.1f} {worst:10.1f} {client:13.1f}   {mark}", flush=True)
    print(f"\nevery page's median server time < {GOAL_MS:.0f} ms at {rows:,} jobs: {'yes' if ok else 'NO'}")
    return ok


async def run(url: str, rows: int) -> bool:
    async with migrated_database(url, DB) as db_url:
        ids = await fill(db_url, rows)

        def serve_and_measure() -> bool:
            with console(db_url) as base:
                return measure(base, ids, rows)

        return await asyncio.to_thread(serve_and_measure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    with database("shoal-bench-console-") as url:
        ok = asyncio.run(run(url, args.rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
