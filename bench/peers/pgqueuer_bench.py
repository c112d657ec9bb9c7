"""PGQueuer adapter (runs in bench/.peers/venv). Protocol: see _common.py.

Batch enqueue: `Queries.enqueue(list_of_entrypoints, list_of_payloads, list_of_priorities)`.
Worker: `QueueManager.run(batch_size=100)` with default (unbounded) concurrency; a job's
row leaves the `pgqueuer` table when it finishes (status buffered, then logged).
"""

from __future__ import annotations

import json
from datetime import timedelta

import _common as c
import asyncpg
import pgqueuer
from pgqueuer import AsyncpgDriver, Queries, QueueManager

ENQUEUE_CHUNK = 5000
BATCH_SIZE = 100
ENTRYPOINT = "noop"


async def _driver(url: str) -> AsyncpgDriver:
    return AsyncpgDriver(await asyncpg.connect(url))


async def setup(url: str) -> None:
    driver = await _driver(url)
    await Queries(driver).install()
    c.emit_json({
        "version": f"pgqueuer {pgqueuer.__version__}",
        "remaining_sql": "SELECT count(*) FROM pgqueuer",
        "config": {"enqueue_chunk": ENQUEUE_CHUNK, "run.batch_size": BATCH_SIZE,
                   "max_concurrent_tasks": "unbounded (default)", "driver": "AsyncpgDriver"},
    })


async def enqueue(url: str, jobs: int) -> None:
    queries = Queries(await _driver(url))
    elapsed = c.timed()
    for start in range(0, jobs, ENQUEUE_CHUNK):
        n = min(jobs, start + ENQUEUE_CHUNK) - start
        payloads: list[bytes | None] = [json.dumps({"n": i}).encode() for i in range(start, start + n)]
        await queries.enqueue([ENTRYPOINT] * n, payloads, [0] * n)
    c.emit_json({"jobs": jobs, "seconds": elapsed()})


async def worker(url: str, latency: bool) -> None:
    qm = QueueManager(Queries(await _driver(url)))

    @qm.entrypoint(ENTRYPOINT)
    async def noop(job: pgqueuer.Job) -> None:
        if latency:
            c.ran(json.loads(job.payload or b"{}")["n"])

    c.ready()
    await qm.run(batch_size=BATCH_SIZE, dequeue_timeout=timedelta(seconds=30))


async def produce(url: str) -> None:
    queries = Queries(await _driver(url))

    async def one(no: int) -> None:
        await queries.enqueue(ENTRYPOINT, json.dumps({"n": no}).encode())

    await c.produce_loop(one)


def main() -> None:
    c.dispatch(setup, enqueue, worker, produce)


if __name__ == "__main__":
    main()
