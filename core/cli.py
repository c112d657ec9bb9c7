"""The `shoal` command: the composition root that wires core, worker and operator together.

Spellings here are a contract (docs, tests and tooling rely on them). Components are
imported inside their subcommands so `shoal enqueue` does not pay for kopf, and the
worker's memory stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg

from shoal import logs
from shoal.config import database_url
from shoal.errors import ShoalError


def _db(args: argparse.Namespace) -> str:
    return database_url(args.database_url) or ""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


async def _with_conn(args: argparse.Namespace, fn: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    conn = await asyncpg.connect(_db(args))
    try:
        return await fn(conn)
    finally:
        await conn.close()


# -- commands ----------------------------------------------------------------------------------
async def cmd_migrate(args: argparse.Namespace) -> int:
    from shoal.migrate import migrate

    applied = await migrate(_db(args))
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")
    return 0


async def cmd_queue(args: argparse.Namespace) -> int:
    from shoal import queues
    from shoal.ratelimit import parse_rate_limit

    async def run(conn: asyncpg.Connection) -> int:
        if args.queue_command == "create":
            changes: dict[str, Any] = {}
            if args.rate_limit is not None:
                changes["rate_limit"] = None if args.rate_limit == "none" else parse_rate_limit(args.rate_limit, "--rate-limit")
            if args.concurrency_limit is not None:
                changes["concurrency_limit"] = args.concurrency_limit or None
            if args.max_attempts is not None:
                changes["max_attempts"] = args.max_attempts
            if args.keep_succeeded is not None:
                changes["keep_succeeded_seconds"] = int(args.keep_succeeded)
            if args.keep_failed is not None:
                changes["keep_failed_seconds"] = None if args.keep_failed < 0 else int(args.keep_failed)
            cfg = await queues.declare_queue(conn, args.name, **changes)
            print(f"queue {cfg.name}: rate_limit={cfg.rate_limit or 'none'} "
                  f"concurrency_limit={cfg.concurrency_limit or 'none'} max_attempts={cfg.max_attempts} "
                  f"paused={cfg.paused}")
        elif args.queue_command in ("pause", "resume"):
            await queues.set_paused(conn, args.name, args.queue_command == "pause")
            print(f"queue {args.name}: {'paused' if args.queue_command == 'pause' else 'resumed'}")
        elif args.queue_command == "list":
            for cfg in await queues.list_queues(conn):
                print(f"{cfg.name}\trate_limit={cfg.rate_limit or 'none'}\t"
                      f"concurrency_limit={cfg.concurrency_limit or 'none'}\tpaused={cfg.paused}")
        return 0

    return await _with_conn(args, run)


async def cmd_enqueue(args: argparse.Namespace) -> int:
    from shoal.client import NewJob, enqueue_many
    from shoal.errors import ValidationError

    try:
        payload = json.loads(args.payload) if args.payload is not None else None
    except json.JSONDecodeError as exc:
        raise ValidationError("--payload", f"not valid JSON ({exc.msg} at column {exc.colno})") from None

    async def run(conn: asyncpg.Connection) -> int:
        total, chunk = args.count, 10_000
        done = 0
        ids: list[int] = []
        while done < total:
            n = min(chunk, total - done)
            ids += await enqueue_many(conn, [NewJob(args.queue, args.task, payload, priority=args.priority,
                                                    delay=args.delay, max_attempts=args.max_attempts)] * n)
            done += n
            if total > chunk:
                print(f"enqueued {done}/{total}", file=sys.stderr)
        print(ids[0] if total == 1 else f"enqueued {total} jobs into {args.queue} (ids {ids[0]}..{ids[-1]})")
        return 0

    return await _with_conn(args, run)


async def cmd_stats(args: argparse.Namespace) -> int:
    from shoal.queues import state_counts

    async def run(conn: asyncpg.Connection) -> int:
        rows = await state_counts(conn, args.queue)
        if args.queue and not rows:
            from shoal.errors import UnknownQueueError

            raise UnknownQueueError(args.queue)
        if args.json:
            print(json.dumps([vars(r) for r in rows]))
        else:
            cols = ["queue", "ready", "scheduled", "running", "succeeded", "failed", "cancelled"]
            print("\t".join(c.upper() for c in cols))
            for r in rows:
                print("\t".join(str(getattr(r, c)) for c in cols))
        return 0

    return await _with_conn(args, run)


async def cmd_jobs(args: argparse.Namespace) -> int:
    from shoal import client, queries

    async def run(conn: asyncpg.Connection) -> int:
        if args.jobs_command == "list":
            rows = await conn.fetch(queries.JOBS_LIST, args.queue, args.state, args.limit)
            print("ID\tQUEUE\tTASK\tSTATE\tATTEMPTS\tRUN_AT\tLAST_ERROR")
            for r in rows:
                err = (r["last_error"] or "").splitlines()[0][:80] if r["last_error"] else ""
                print(f"{r['id']}\t{r['queue']}\t{r['task']}\t{r['state']}\t{r['attempts']}/{r['max_attempts']}\t"
                      f"{r['run_at'].isoformat(timespec='seconds')}\t{err}")
        elif args.jobs_command == "retry":
            ids = list(args.ids)
            if args.all_failed:
                ids += [r["id"] for r in await conn.fetch(queries.JOBS_ALL_FAILED, args.queue)]
            if not ids:
                print("nothing to retry: give job ids or --all-failed", file=sys.stderr)
                return 1
            retried = await client.retry(conn, ids)
            print(f"retrying {len(retried)} job(s)")
            skipped = set(ids) - set(retried)
            if skipped:
                print(f"not failed or cancelled, left alone: {sorted(skipped)}", file=sys.stderr)
        elif args.jobs_command == "cancel":
            result = await client.cancel(conn, args.ids)
            for job_id in args.ids:
                print(f"{job_id}\t{result.get(job_id, 'not cancellable (finished or unknown)')}")
        return 0

    return await _with_conn(args, run)


async def cmd_worker(args: argparse.Namespace) -> int:
    from shoal.tasks import load_modules
    from shoal.worker.runner import WorkerConfig, run_worker

    load_modules(args.tasks)
    config = WorkerConfig(
        database_url=_db(args), queue=args.queue, concurrency=args.concurrency, poll_interval=args.poll_interval,
        heartbeat_interval=args.heartbeat_interval, stale_after=args.stale_after, drain_timeout=args.drain_timeout,
        job_timeout=args.job_timeout, backoff_base=args.backoff_base, backoff_cap=args.backoff_max,
        metrics_port=args.metrics_port, held_claims=args.held_claims,
    )
    await run_worker(config)
    return 0


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal", description="PostgreSQL job queue whose workers scale themselves")
    p.add_argument("--database-url", help="PostgreSQL URL (default: $SHOAL_DATABASE_URL)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "text"])
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations (safe to run concurrently)")

    q = sub.add_parser("queue", help="declare and manage queues")
    qs = q.add_subparsers(dest="queue_command", required=True)
    qc = qs.add_parser("create", help="declare a queue, or update the options given")
    qc.add_argument("name")
    qc.add_argument("--rate-limit", help="at most N starts per period across all workers: 100/s, 10/m, 5/h, or none")
    qc.add_argument("--concurrency-limit", type=int, help="at most N jobs running at once across all pods (0: none)")
    qc.add_argument("--max-attempts", type=_positive_int, help="default attempts for jobs that do not say")
    qc.add_argument("--keep-succeeded", type=_non_negative, help="seconds to keep succeeded jobs (0: delete at once)")
    qc.add_argument("--keep-failed", type=float, help="seconds to keep failed/cancelled jobs (-1: forever)")
    for name in ("pause", "resume"):
        qs.add_parser(name, help=f"{name} a queue").add_argument("name")
    qs.add_parser("list", help="list queues")

    e = sub.add_parser("enqueue", help="add jobs")
    e.add_argument("--queue", required=True)
    e.add_argument("--task", required=True)
    e.add_argument("--payload", help="JSON payload")
    e.add_argument("--count", type=_positive_int, default=1)
    e.add_argument("--priority", type=int, default=0, help="higher runs first")
    e.add_argument("--delay", type=_non_negative, help="seconds before the job may run")
    e.add_argument("--max-attempts", type=_positive_int)

    w = sub.add_parser("worker", help="run jobs of one queue")
    w.add_argument("--queue", required=True)
    w.add_argument("--concurrency", type=_positive_int, default=10, help="jobs run at once by this process")
    w.add_argument("--tasks", nargs="*", default=[], metavar="MODULE", help="modules that register tasks")
    w.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port")
    w.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls when no NOTIFY arrives")
    w.add_argument("--heartbeat-interval", type=float, default=5.0)
    w.add_argument("--stale-after", type=float, default=30.0,
                   help="seconds without heartbeat after which a worker's jobs are rescued")
    w.add_argument("--drain-timeout", type=float, default=30.0, help="on SIGTERM, seconds to let running jobs finish")
    w.add_argument("--job-timeout", type=float, help="default per-job timeout in seconds")
    w.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay in seconds")
    w.add_argument("--backoff-max", type=float, default=300.0, help="longest retry delay in seconds")
    w.add_argument("--no-held-claims", dest="held_claims", action="store_false",
                   help="always lease jobs (two writes per job) instead of holding short jobs' batches in a "
                        "transaction (one write per job)")

    s = sub.add_parser("stats", help="job counts by state")
    s.add_argument("--queue")
    s.add_argument("--json", action="store_true")

    j = sub.add_parser("jobs", help="inspect, retry and cancel jobs")
    js = j.add_subparsers(dest="jobs_command", required=True)
    jl = js.add_parser("list")
    jl.add_argument("--queue")
    jl.add_argument("--state", choices=["pending", "running", "succeeded", "failed", "cancelled"])
    jl.add_argument("--limit", type=_positive_int, default=50)
    jr = js.add_parser("retry")
    jr.add_argument("ids", nargs="*", type=int)
    jr.add_argument("--all-failed", action="store_true")
    jr.add_argument("--queue", help="with --all-failed: only this queue")
    jc = js.add_parser("cancel")
    jc.add_argument("ids", nargs="+", type=int)

    _add_extension_commands(sub)
    return p


def _add_extension_commands(sub: Any) -> None:
    """Components above the core (operator, local autoscaler) add their subcommands through the
    `shoal.commands` entry point, so the core never imports them."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="shoal.commands"), key=lambda e: e.name):
        ep.load()(sub)


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "migrate": cmd_migrate, "queue": cmd_queue, "enqueue": cmd_enqueue, "stats": cmd_stats,
    "jobs": cmd_jobs, "worker": cmd_worker,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    try:
        return asyncio.run(handler(args))
    except ShoalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
