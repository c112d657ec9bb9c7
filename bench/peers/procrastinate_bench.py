"""Procrastinate adapter (runs in bench/.peers/venv). Protocol: see _common.py.

Batch enqueue: `Task.batch_defer_async(*kwargs)`. Worker: `App.run_worker_async` with
LISTEN/NOTIFY on (the default), concurrency 10 and jobs kept (`delete_jobs="never"`, the
default); a job is finished when its status is no longer todo/doing.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

import _common as c
import procrastinate

ENQUEUE_CHUNK = 5000
CONCURRENCY = int(os.environ.get("BENCH_PROCRASTINATE_CONCURRENCY", "10"))
QUEUE = "bench"

logging.basicConfig(level=logging.WARNING)


def make_app(url: str, latency: bool = False) -> tuple[procrastinate.App, procrastinate.tasks.Task]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop", queue=QUEUE)
    async def noop(n: int) -> None:
        if latency:
            c.ran(n)

    return app, noop


async def setup(url: str) -> None:
    app, _ = make_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
    c.emit_json({
        "version": f"procrastinate {importlib.metadata.version('procrastinate')}",
        "remaining_sql": "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
        "config": {"enqueue_chunk": ENQUEUE_CHUNK, "concurrency": CONCURRENCY, "listen_notify": True,
                   "connector": "PsycopgConnector"},
    })


async def enqueue(url: str, jobs: int) -> None:
    app, noop = make_app(url)
    async with app.open_async():
        elapsed = c.timed()
        for start in range(0, jobs, ENQUEUE_CHUNK):
            await noop.batch_defer_async(*({"n": i} for i in range(start, min(jobs, start + ENQUEUE_CHUNK))))
        seconds = elapsed()
    c.emit_json({"jobs": jobs, "seconds": seconds})


async def worker(url: str, latency: bool) -> None:
    app, _ = make_app(url, latency)
    async with app.open_async():
        c.ready()
        await app.run_worker_async(queues=[QUEUE], concurrency=CONCURRENCY, listen_notify=True,
                                   install_signal_handlers=True)


async def produce(url: str) -> None:
    app, noop = make_app(url)
    async with app.open_async():
        await c.produce_loop(lambda no: noop.defer_async(n=no))


def main() -> None:
    c.dispatch(setup, enqueue, worker, produce)


if __name__ == "__main__":
    main()
