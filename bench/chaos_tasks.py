"""Tasks run by the chaos suite's `shoal worker` processes (bench/chaos.py).

Every run of a recording task writes its own row in `chaos.runs`, on connections of its own
(not the worker's): one row when the handler starts, its finish time and outcome when it ends.
That table is the ground truth the suite judges Shoal by: how often each job really ran, by
which process, and whether a run completed. It lives on a server the suite never restarts.

Two ways to record, chosen by $CHAOS_RECORD:
- `sync` (default): the handler awaits each write (autocommit, synchronous commit), so a run
  is on record before it does anything and its end before it returns, like a job that writes
  its result to a database;
- `batch`: the handler hands its records to a per-process writer that commits them in batches
  within milliseconds, so the handler itself takes only its sleep. Held claims engage only for
  handlers under 2 ms on average, which two synchronous writes on a loaded 2-core machine
  exceed. A kill -9 can drop the last milliseconds of records: those runs then look
  unfinished (or absent), which only makes a duplicate caught by that kill look like a rescue.

Times are the handler's own wall clock (epoch seconds), taken before the write. Writes are
retried until the database answers and are idempotent (a client-side run id).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg

from shoal import task
from shoal.tasks import Job

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.runs (
    run_id      uuid PRIMARY KEY,
    job_id      bigint           NOT NULL,
    attempt     integer          NOT NULL,
    pid         integer          NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision,
    outcome     text  -- ok | error | cancelled; NULL: the run never ended (its process died)
);
CREATE INDEX IF NOT EXISTS runs_job ON chaos.runs (job_id);
CREATE INDEX IF NOT EXISTS runs_open ON chaos.runs (pid) WHERE finished_at IS NULL;
"""

_START = ("INSERT INTO chaos.runs (run_id, job_id, attempt, pid, started_at) VALUES ($1, $2, $3, $4, $5) "
          "ON CONFLICT (run_id) DO NOTHING")
_FINISH = "UPDATE chaos.runs SET finished_at = $2, outcome = $3 WHERE run_id = $1"
_WRITE_PATIENCE = 600.0  # seconds a record may wait for the database (longer than any outage)

_pool: asyncpg.Pool | None = None
_pool_lock: asyncio.Lock | None = None


async def _get_pool() -> asyncpg.Pool:
    """One small pool per worker process, made on first use (in the worker's event loop)."""
    global _pool, _pool_lock
    if _pool is None:
        _pool_lock = _pool_lock or asyncio.Lock()
        async with _pool_lock:
            if _pool is None:
                url = os.environ.get("CHAOS_RUNS_URL") or os.environ["SHOAL_DATABASE_URL"]
                size = int(os.environ.get("CHAOS_POOL_SIZE", "10"))
                # min_size 0: creating the pool connects nothing, so it works while the database is down.
                _pool = await asyncpg.create_pool(url, min_size=0, max_size=size,
                                                  server_settings={"synchronous_commit": "on"})
    return _pool


async def _write(sql: str, *args: Any) -> None:
    delay = 0.02
    deadline = time.monotonic() + _WRITE_PATIENCE
    while True:
        try:
            pool = await _get_pool()
            await pool.execute(sql, *args, timeout=10)
            return
        except Exception:  # the database is restarting: wait for it (CancelledError is not caught)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


class _Batcher:
    """The `batch` recorder: buffers records and commits them in one transaction at a time."""

    def __init__(self) -> None:
        self.starts: list[tuple[Any, ...]] = []
        self.finishes: list[tuple[Any, ...]] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, buffer: list[tuple[Any, ...]], record: tuple[Any, ...]) -> None:
        buffer.append(record)
        self.idle.clear()
        self.wake.set()
        if self.task is None:
            self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            starts, finishes, self.starts, self.finishes = self.starts, self.finishes, [], []
            delay = 0.02
            while starts or finishes:
                try:
                    async with (await _get_pool()).acquire() as conn, conn.transaction():
                        # executemany pipelines the rows in one round trip; each is a primary-key write.
                        if starts:
                            await conn.executemany(_START, starts)
                        if finishes:
                            await conn.executemany(_FINISH, finishes)
                    break
                except Exception:  # the database is unreachable: keep the records, try again
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            if not self.starts and not self.finishes:
                self.idle.set()

    async def flush(self) -> None:
        if self.task is not None and (self.starts or self.finishes or not self.idle.is_set()):
            await self.idle.wait()


_batcher = _Batcher()
_BATCH = os.environ.get("CHAOS_RECORD", "sync") == "batch"


async def _started(run_id: uuid.UUID, job: Job) -> None:
    record = (run_id, job.id, job.attempt, os.getpid(), time.time())
    if _BATCH:
        _batcher.add(_batcher.starts, record)
    else:
        await _write(_START, *record)


async def _ended(run_id: uuid.UUID, outcome: str) -> None:
    record = (run_id, time.time(), outcome)
    if _BATCH:
        _batcher.add(_batcher.finishes, record)
    else:
        await _write(_FINISH, *record)


async def _recorded(job: Job, body: Any) -> None:
    run_id = uuid.uuid4()
    await _started(run_id, job)
    outcome = "cancelled"
    try:
        await body
        outcome = "ok"
    except asyncio.CancelledError:
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        await _ended(run_id, outcome)


@task("chaos.sleep")
async def sleep(job: Job) -> None:
    """Sleep `ms` milliseconds (0: just yield), recording the run."""
    ms = float(job.payload.get("ms", 0))
    await _recorded(job, asyncio.sleep(ms / 1000))


@task("chaos.poison")
async def poison(job: Job) -> None:
    """Kill the worker process running it, every time (after recording that it started, and
    flushing the records of its neighbours)."""
    await _started(uuid.uuid4(), job)
    await _batcher.flush()
    os._exit(1)


@task("chaos.noop")
async def noop(job: Job) -> None:
    """Nothing, not recorded: for the backlog scenario, which measures throughput only."""
