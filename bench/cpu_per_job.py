"""Where a drained job's time goes: CPU per job of the worker process and of PostgreSQL,
for held claims (one write per job, the default for short jobs), leased claims
(`--no-held-claims`: two writes per job) and the bare reference loop of bench/peers/bare_bench.py
(claim-and-delete, at-most-once, no features), alternating in one run on one server.

Enqueues N no-op jobs, starts one worker process (or --workers N), and over a few seconds of steady state
reads the CPU time used by the worker and by every PostgreSQL process. Usage:

    .venv/bin/python bench/cpu_per_job.py [--jobs 1000000] [--concurrency 500] [--seconds 3] [--rounds 3] [--workers 1]

Prints the median of the rounds as its last line (`{"median": {mode: {rate, worker_us, pg_us}}}`) and
writes it, with every round, the command and the machine, to bench/results/cpu_per_job.json (`--output`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil

from shoal import client, queues
from shoal.client import NewJob
from shoal.migrate import migrate
from shoal.testing.machine import cpu_model
from shoal.testing.postgres import database
from shoal.testing.workers import spawn_worker

MODES = {"leased": ["--no-held-claims"], "held": [], "bare": None}
BARE = Path(__file__).resolve().parent / "peers" / "bare_bench.py"
RESULTS = Path(__file__).resolve().parent / "results" / "cpu_per_job.json"


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


def enqueue_bare(url: str, jobs: int) -> None:
    """The bare loop's schema and jobs, through its adapter."""
    for command in (["setup"], ["enqueue", "--jobs", str(jobs)]):
        subprocess.run([sys.executable, str(BARE), command[0], "--url", url, *command[1:]], check=True,
                       capture_output=True)


def spawn_bare(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(BARE), "worker", "--url", url], stdout=subprocess.DEVNULL)


async def measure(url: str, conn: asyncpg.Connection, args: argparse.Namespace,
                  options: list[str] | None) -> dict[str, float]:
    if options is None:  # the bare loop, through its benchmark adapter
        table = "bare_jobs"
        await conn.execute("DROP TABLE IF EXISTS bare_jobs")
        await asyncio.to_thread(enqueue_bare, url, args.jobs)
        spawn = functools.partial(spawn_bare, url)
    else:
        table = "shoal.jobs"
        await conn.execute("DELETE FROM shoal.jobs")
        for _ in range(0, args.jobs, 10_000):
            await client.enqueue_many(conn, [NewJob("cpu", "shoal.noop", {"n": i}) for i in range(10_000)])
        spawn = functools.partial(spawn_worker, url, "cpu", args.concurrency, *options)
    await conn.execute(f"VACUUM ANALYZE {table}")  # before the workers start: it can take seconds
    workers = [spawn() for _ in range(args.workers)]
    count = f"SELECT count(*) FROM {table}"  # noqa: S608 (one of two fixed names)
    await asyncio.sleep(1.5)  # past start-up and the first (always leased) claims
    procs = [psutil.Process(w.pid) for w in workers]
    w0, p0 = sum(sum(p.cpu_times()[:2]) for p in procs), postgres_cpu()
    n0, t0 = await conn.fetchval(count), time.perf_counter()
    await asyncio.sleep(args.seconds)
    n1, t1 = await conn.fetchval(count), time.perf_counter()
    w1, p1 = sum(sum(p.cpu_times()[:2]) for p in procs), postgres_cpu()
    for w in workers:
        w.terminate()
        w.wait()
    done = n0 - n1
    if n1 == 0:
        print("  (queue ran dry during the window: raise --jobs)")
    return {"rate": done / (t1 - t0), "worker_us": (w1 - w0) / done * 1e6, "pg_us": (p1 - p0) / done * 1e6}


async def main(args: argparse.Namespace) -> dict[str, object]:
    started = time.time()
    with database("shoal-cpu-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        version = await conn.fetchval("SHOW server_version")
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
        print("median of the rounds:")
        for mode, m in med.items():
            print(f"  {mode:6}: {m['rate']:8,.0f} jobs/s ({m['rate'] / med['held']['rate']:.2f}x held); worker CPU "
                  f"{m['worker_us']:5.1f} us/job; PostgreSQL CPU {m['pg_us']:5.1f} us/job")
        print(json.dumps({"median": med}))
    return {
        "command": "python bench/cpu_per_job.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "duration_s": time.time() - started,
        "machine": {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(), "os": platform.platform(),
                    "python": platform.python_version(), "postgresql": version, "asyncpg": asyncpg.__version__},
        "args": {k: v for k, v in vars(args).items() if k != "output"},
        "median": med, "rounds": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)  # no round may run dry: 4.5 s at up to ~170k jobs/s
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (their CPU is summed)")
    parser.add_argument("--output", default=str(RESULTS), help="JSON results file ('' for none)")
    cli = parser.parse_args()
    report = asyncio.run(main(cli))
    if cli.output:
        Path(cli.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cli.output).write_text(json.dumps(report, indent=2) + "\n")
