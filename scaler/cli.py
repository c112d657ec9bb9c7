"""`shoal up`: the whole system on one machine, workers scaled by the same autoscaler.

With no database URL it starts an embedded PostgreSQL (the `pgserver` wheel) in a data
directory, migrates and declares the queue. `--demo` enqueues a burst, shows progress
while the autoscaler drains it with more workers, waits until it scales back down, and
exits; without `--demo` it runs until Ctrl-C.

Nothing a client does can stop it: a failed status query or autoscaler tick (a statement
timeout under a big enqueue, a restart of the server) is logged in one line and retried, and
only Ctrl-C or SIGTERM ends it. It stops the embedded server only if it started that server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from shoal.config import database_url
from shoal.errors import ValidationError
from shoal.scaler.decision import Policy, translate_error

if TYPE_CHECKING:
    from shoal.queues import StateCounts


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="run a queue with autoscaled local workers (embedded PostgreSQL by default)")
    up.add_argument("--queue", default="demo")
    up.add_argument("--data-dir", default=".shoal/postgres", help="embedded PostgreSQL data (no --database-url)")
    up.add_argument("--tasks", nargs="*", default=[], metavar="MODULE")
    up.add_argument("--concurrency", type=int, default=10, help="jobs per worker process")
    up.add_argument("--min-workers", type=int, default=0)
    up.add_argument("--max-workers", type=int, default=4)
    up.add_argument("--scale-down-delay", type=float, default=5.0)
    up.add_argument("--interval", type=float, default=1.0, help="seconds between autoscaler ticks")
    up.add_argument("--drain-within", type=float, default=None, metavar="SECONDS",
                    help="drain-time objective: once job speed is measured, run enough workers that a backlog "
                         "is done within SECONDS (default: enough workers to run every job at once)")
    up.add_argument("--demo", action="store_true", help="enqueue a burst, drain it, scale back down, exit")
    up.add_argument("--demo-jobs", type=int, default=3000)
    up.add_argument("--demo-job-ms", type=int, default=20)
    up.add_argument("--timeout", type=float, default=300.0, help="with --demo: give up after this many seconds")
    up.set_defaults(handler=run_up)


# The decision's names for the knobs `shoal up` takes as flags: its errors name the flag.
FLAGS = {"min_replicas": "--min-workers", "max_replicas": "--max-workers", "concurrency": "--concurrency",
         "scale_down_delay": "--scale-down-delay", "drain_within": "--drain-within"}


def up_policy(args: argparse.Namespace) -> Policy:
    """The scaling knobs from the flags (``--min-workers 0`` allows scaling to zero). Raises
    ValidationError naming the flag. Pause and limits are not flags: the loop reads them from
    the queue (`shoal queue pause`, `shoal queue create --rate-limit`), like the workers do."""
    try:
        return Policy(min_replicas=args.min_workers, max_replicas=args.max_workers, concurrency=args.concurrency,
                      scale_down_delay=args.scale_down_delay, scale_to_zero=args.min_workers == 0,
                      drain_within=getattr(args, "drain_within", None))
    except ValidationError as exc:
        raise translate_error(exc, FLAGS) from None


async def run_up(args: argparse.Namespace) -> int:
    from shoal.client import NewJob, enqueue_many
    from shoal.migrate import migrate
    from shoal.queues import declare_queue
    from shoal.scaler.local import LocalWorkers, local_autoscaler
    from shoal.scaler.loop import EnqueueWakeups, create_measure_pool

    policy = up_policy(args)  # before anything starts: a bad flag is one line, exit 2
    url = database_url(args.database_url, required=False)
    embedded = None
    if not url:
        from shoal.embedded import start_embedded

        say(f"starting embedded PostgreSQL in {args.data_dir}")
        embedded = start_embedded(Path(args.data_dir))
        url = embedded.url
    say(f"database {url}")
    await migrate(url)
    pool = await create_measure_pool(url)
    await declare_queue(pool, args.queue)
    workers = LocalWorkers(url, args.queue, concurrency=args.concurrency, tasks=args.tasks,
                           log_dir=str(Path(args.data_dir).parent / "logs"))
    wakeups = EnqueueWakeups(url)
    scaler = local_autoscaler(workers, pool, policy, interval=args.interval, wakeups=wakeups)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(scaler.run(stop))
    code = 0
    try:
        if args.demo:
            say(f"demo: enqueueing {args.demo_jobs} jobs of {args.demo_job_ms} ms into {args.queue!r}")
            await enqueue_many(pool, [NewJob(args.queue, "shoal.sleep", {"seconds": args.demo_job_ms / 1000})
                                      for _ in range(args.demo_jobs)])
        started = time.monotonic()
        peak, status = 0, Status()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if runner.done() and not stop.is_set():  # the loop died of something unforeseen: restart it
                exc = runner.exception()
                say(f"autoscaler loop stopped ({exc!r}); restarting it")
                runner = asyncio.create_task(scaler.run(stop))
            try:
                counts, last_id = await status.read(pool, args.queue)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                say(f"status query failed, retrying: {type(exc).__name__}: {exc}")
                continue
            peak = max(peak, len(workers.procs))
            reason = scaler.last.reason if scaler.last else ""
            say(f"{status.line(counts, last_id, time.monotonic())}  workers {len(workers.procs):>2}  | {reason}")
            if args.demo:
                if backlog(counts) == 0 and len(workers.procs) <= policy.effective_min and peak > 1:
                    say(f"demo done: drained with up to {peak} workers, back to {len(workers.procs)}")
                    break
                if time.monotonic() - started > args.timeout:
                    say("demo timed out")
                    code = 1
                    break
    finally:
        stop.set()
        with contextlib.suppress(Exception):  # its failure was reported when it happened
            await runner
        say("stopping workers")
        await workers.shutdown()
        await wakeups.close()
        await pool.close()
        if embedded is not None and embedded.started:
            say("stopping embedded PostgreSQL")
            embedded.stop()
    return code


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stdout, flush=True)


class Status:
    """The status line. Counts are capped/estimated (constant time at any backlog); jobs/s done
    is enqueued minus backlog growth, so it is shown only while the backlog is counted exactly."""

    def __init__(self) -> None:
        self.last: tuple[float, int, int | None] | None = None  # time, last job id, exact backlog

    async def read(self, pool: asyncpg.Pool, queue: str) -> tuple[StateCounts, int]:
        from shoal import queries
        from shoal.queues import state_counts

        async with pool.acquire() as conn:
            rows = await state_counts(conn, queue)
            last_id = int(await conn.fetchval(queries.JOBS_LAST_ID))
        return rows[0], last_id

    def line(self, c: StateCounts, last_id: int, now: float) -> str:
        # "pending" as the jobs' state: ready now or scheduled for later (the autoscaler counts
        # only the ready ones; its reason at the end of the line says so).
        not_started = c.ready + c.scheduled
        kinds = {c.kind("ready"), c.kind("scheduled")}
        mark = "~" if "estimated" in kinds else ">" if "more_than" in kinds else ""
        left = backlog(c)
        done = "-"
        if self.last is not None:
            t0, id0, left0 = self.last
            added = (last_id - id0) / max(now - t0, 1e-6)
            if left is not None and left0 is not None:
                done = f"{max(added - (left - left0) / max(now - t0, 1e-6), 0):.0f}"
            rates = f"enqueued/s {added:>7.0f}  done/s {done:>7}"
        else:
            rates = f"enqueued/s {'-':>7}  done/s {done:>7}"
        self.last = (now, last_id, left)
        return f"pending {mark + str(not_started):>8}  running {c.shown('running'):>5}  {rates}"


def backlog(c: StateCounts) -> int | None:
    """Jobs not finished, if counted exactly (finished ones may be estimated: they do not matter)."""
    if any(c.kind(s) != "exact" for s in ("ready", "scheduled", "running")):
        return None
    return c.ready + c.scheduled + c.running
