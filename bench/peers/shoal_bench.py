"""Shoal adapter (runs in the project venv). Protocol: see _common.py.

Batch enqueue: `shoal.client.enqueue_many(conn, [NewJob(...)])`, 5,000 jobs per call like
every peer (one call per chunk). Worker: one in-process `shoal.worker.runner.Worker`
with the defaults a production worker has — heartbeats, rescue, pruning, retries (max 5
attempts, backoff) and Prometheus metrics all on, the GC tuned as `shoal worker` tunes it; only the concurrency is chosen for
no-op jobs (`BENCH_SHOAL_CONCURRENCY`, default below). The queue keeps Shoal's default
retention (succeeded jobs are deleted on completion), so "unfinished" is pending + running.

The handler is a no-op; with --latency its first action prints the RUN line.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
from pathlib import Path

import _common as c
import asyncpg

import shoal
from shoal.client import NewJob, enqueue, enqueue_many
from shoal.migrate import migrate
from shoal.queues import declare_queue
from shoal.tasks import TaskRegistry
from shoal.worker.runner import Worker, WorkerConfig, tune_gc

QUEUE = "bench"
TASK = "bench.noop"
ENQUEUE_CHUNK = int(os.environ.get("BENCH_SHOAL_CHUNK", 5000))
# Tried 100, 250, 500 and 1000 on this machine for no-op jobs; see docs/benchmarks.md.
CONCURRENCY = int(os.environ.get("BENCH_SHOAL_CONCURRENCY", 500))
LATENCY = False

registry = TaskRegistry()


@shoal.task(TASK, registry=registry)
async def noop(job: shoal.Job) -> None:
    if LATENCY:
        c.ran(job.payload["n"])


def _version() -> str:
    version = importlib.metadata.version("shoal")
    repo = Path(__file__).resolve().parents[2]
    rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "core", "worker", "scaler", "sql"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"shoal {version}" + (f" ({rev}{'+dirty' if dirty else ''})" if rev else "")


async def setup(url: str) -> None:
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await declare_queue(conn, QUEUE)
    finally:
        await conn.close()
    c.emit_json({
        "version": _version(),
        "remaining_sql": "SELECT count(*) FROM shoal.jobs WHERE queue = 'bench' AND state IN ('pending', 'running')",
        "config": {"enqueue_chunk": ENQUEUE_CHUNK, "api": "enqueue_many", "worker.concurrency": CONCURRENCY,
                   "heartbeats/retries/metrics": "on (defaults)", "wakeup": "LISTEN/NOTIFY + 1 s poll"},
    })


async def enqueue_jobs(url: str, jobs: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        elapsed = c.timed()
        for start in range(0, jobs, ENQUEUE_CHUNK):
            await enqueue_many(conn, [NewJob(QUEUE, TASK, {"n": i})
                                      for i in range(start, min(jobs, start + ENQUEUE_CHUNK))])
        seconds = elapsed()
    finally:
        await conn.close()
    c.emit_json({"jobs": jobs, "seconds": seconds})


async def worker(url: str, latency: bool) -> None:
    global LATENCY
    LATENCY = latency
    tune_gc()  # this process is only a worker, as under `shoal worker`
    w = Worker(WorkerConfig(database_url=url, queue=QUEUE, concurrency=CONCURRENCY, registry=registry))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, w.request_stop)
    c.ready()
    await w.run()


async def produce(url: str) -> None:
    conn = await asyncpg.connect(url)

    async def one(no: int) -> None:
        await enqueue(conn, QUEUE, TASK, {"n": no})

    await c.produce_loop(one)


def main() -> None:
    c.dispatch(setup, enqueue_jobs, worker, produce)


if __name__ == "__main__":
    main()
