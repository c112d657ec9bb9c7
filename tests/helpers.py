"""Test helpers: run workers in-process or as real processes, and wait for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from shoal.tasks import TaskRegistry
from shoal.worker.runner import Worker, WorkerConfig

TESTS_DIR = Path(__file__).resolve().parent


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@contextlib.asynccontextmanager
async def running_worker(db_url: str, queue: str, registry: TaskRegistry | None = None,
                         **options: Any) -> AsyncIterator[Worker]:
    """A real Worker in this event loop, stopped (drained) on exit."""
    cfg: dict[str, Any] = {"poll_interval": 0.2, "heartbeat_interval": 0.5, "stale_after": 3.0}
    cfg.update(options)
    if registry is not None:
        cfg["registry"] = registry
    worker = Worker(WorkerConfig(database_url=db_url, queue=queue, **cfg))
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: _ready(worker, task), timeout=10)
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def _ready(worker: Worker, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raise the worker's startup error
    return worker.db_ok


def spawn_worker(db_url: str, queue: str, *extra: str, tasks: tuple[str, ...] = ("worker_tasks",),
                 log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """`shoal worker` as a real OS process, with the test task modules importable."""
    env = {**os.environ, "SHOAL_DATABASE_URL": db_url, "PYTHONPATH": str(TESTS_DIR)}
    cmd = [sys.executable, "-m", "shoal.cli", "--log-format", "json", "worker", "--queue", queue,
           "--tasks", *tasks, *extra]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def counter(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include ``labels``."""
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', m[1] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m[2])
    return total
