"""Batch enqueue, path against path, on one server: shoal.enqueue_many (INSERT) and COPY.

Times `enqueue_many`'s two paths (`_enqueue_insert`: one call to the SQL function;
`_enqueue_copy`: reserve ids, then binary COPY) for the same jobs on the same connection,
after the same client-side validation, plus the validation alone. With --baseline REF the
`enqueue_many` of core/client.py at that git revision is timed too (what the code did before).
Each timed run starts from an empty table (TRUNCATE, not timed); "cold" is a path's first run on
a new connection (statements not yet prepared), "warm" the median of the next --repeat runs.

    .venv/bin/python bench/enqueue_paths.py [--jobs 50000] [--chunk 50000] [--repeat 5] [--baseline HEAD]
    .venv/bin/python bench/enqueue_paths.py --sizes 1,10,50,100,200,1000   # where COPY starts to win
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from shoal import client, queues
from shoal.client import NewJob
from shoal.migrate import migrate
from shoal.testing.postgres import database

QUEUE, TASK = "bench", "bench.noop"
ROOT = Path(__file__).resolve().parent.parent
Enqueue = Callable[[asyncpg.Connection, list[NewJob]], Awaitable[Any]]


def baseline(ref: str) -> Enqueue:
    """`enqueue_many` as core/client.py had it at `ref`."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:core/client.py"], capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType(f"shoal_client_{ref}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:core/client.py", "exec"), module.__dict__)  # noqa: S102
    return module.enqueue_many  # type: ignore[no-any-return]


PATHS: dict[str, Enqueue] = {
    "insert": lambda conn, jobs: client._enqueue_insert(conn, client._validate(jobs)),
    "copy": lambda conn, jobs: client._enqueue_copy(conn, jobs),
}


async def timed_run(conn: asyncpg.Connection, enqueue: Enqueue, jobs: int, chunk: int) -> float:
    await conn.execute("TRUNCATE shoal.jobs")
    batches = [[NewJob(QUEUE, TASK, {"n": i}) for i in range(s, min(jobs, s + chunk))] for s in range(0, jobs, chunk)]
    t0 = time.perf_counter()
    for batch in batches:
        await enqueue(conn, batch)
    seconds = time.perf_counter() - t0
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == jobs
    return seconds


async def throughput(url: str, paths: dict[str, Enqueue], jobs: int, chunk: int, repeat: int) -> None:
    validation = []
    sample = [NewJob(QUEUE, TASK, {"n": i}) for i in range(jobs)]
    for _ in range(repeat):
        t0 = time.perf_counter()
        client._validate(sample)
        validation.append(time.perf_counter() - t0)
    print(f"client-side validation + encoding of {jobs:,} jobs: {statistics.median(validation) * 1e3:.1f} ms "
          f"({jobs / statistics.median(validation):,.0f} jobs/s)")
    print(f"{jobs:,} jobs in batches of {chunk:,} (jobs/s):")
    conns = {name: await asyncpg.connect(url) for name in paths}
    cold = {name: await timed_run(conns[name], fn, jobs, chunk) for name, fn in paths.items()}
    warm: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeat):
        for name, fn in paths.items():  # interleaved, so both see the same server state
            warm[name].append(await timed_run(conns[name], fn, jobs, chunk))
    for name in paths:
        w = warm[name]
        print(f"  {name:>16}: cold {jobs / cold[name]:>9,.0f}   warm median {jobs / statistics.median(w):>9,.0f}"
              f"   (warm min..max {jobs / max(w):,.0f}..{jobs / min(w):,.0f})")
    for c in conns.values():
        await c.close()


async def by_size(url: str, sizes: list[int], repeat: int) -> None:
    """Per-call latency of each path for small batches: where COPY's extra round trips pay off.

    synchronous_commit is off for this session: both paths commit once per call, and the
    WAL flush (milliseconds here, and noisy) would hide the difference being measured.
    """
    conn = await asyncpg.connect(url)
    await conn.execute("SET synchronous_commit = off")
    print("median ms per enqueue_many call (warm; synchronous_commit off):")
    print(f"  {'jobs':>6} {'insert':>8} {'copy':>8}")
    for size in sizes:
        await conn.execute("TRUNCATE shoal.jobs")
        times: dict[str, list[float]] = {name: [] for name in PATHS}
        for rep in range(repeat + 2):
            for name, fn in PATHS.items():  # interleaved, so both see the same server state
                batch = [NewJob(QUEUE, TASK, {"n": i}) for i in range(size)]
                t0 = time.perf_counter()
                await fn(conn, batch)
                if rep >= 2:  # the first two warm up the statement caches
                    times[name].append(time.perf_counter() - t0)
        print(f"  {size:>6} " + " ".join(f"{statistics.median(times[n]) * 1e3:>8.3f}" for n in PATHS))
    await conn.close()


async def main(args: argparse.Namespace) -> None:
    paths = dict(PATHS)
    if args.baseline:
        paths = {f"before ({args.baseline})": baseline(args.baseline), **paths}
    with database("shoal-enqueue-paths-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await queues.declare_queue(conn, QUEUE)
        await conn.close()
        if args.sizes:
            await by_size(url, [int(s) for s in args.sizes.split(",")], args.repeat)
        else:
            await throughput(url, paths, args.jobs, args.chunk, args.repeat)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--chunk", type=int, default=50_000, help="jobs per enqueue_many call")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--baseline", help="also time enqueue_many from core/client.py at this git revision")
    p.add_argument("--sizes", help="comma-separated batch sizes: per-call latency of each path instead")
    asyncio.run(main(p.parse_args()))
