"""The `shoal` command (`shoal.cli`, folder cli/): the composition root on top of every component.

It wires the core, the worker and, through the `shoal.commands` entry points, the operator and the
local autoscaler together; nothing imports it (pyproject.toml's import contracts hold that).
`python -m shoal.cli` runs it too (cli/__main__.py).

Spellings here are a contract (docs, tests and tooling rely on them). Components are
imported inside their subcommands so `shoal enqueue` does not pay for kopf, and the
worker's memory stays small.

Failures a user can fix end in one line on stderr (a traceback only with --log-level debug):
exit 2 when the command or its configuration is wrong (flags, URL, password, schema not
migrated), 1 when it could not be done (database unreachable or refusing, unknown job ids).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg

from shoal import logs
from shoal.config import CONNECT_TIMEOUT, MAX_ENQUEUE_COUNT, STALE_AFTER, database_url, explain, read_payload
from shoal.config import enqueue_count as _count
from shoal.config import non_negative_int as _non_negative_int
from shoal.config import positive_int as _positive_int
from shoal.config import seconds as _non_negative
from shoal.config import seconds_or_forever as _keep_failed
from shoal.errors import ConfigError, ShoalError
from shoal.version import __version__

ENQUEUE_CHUNK = 10_000  # jobs per transaction: workers see each chunk as soon as it commits
ENQUEUE_CHUNK_BYTES = 16 << 20  # and at most this much payload per transaction
# A bulk load outgrowing the statistics leaves workers on plans made for a small table (measured:
# 2M jobs into an empty table, workers fell from 2,000 to 0-200 jobs/s until an ANALYZE, then ran at
# 5,000/s during the rest of the load). Each time the load doubles the analysed size, we ANALYZE.
JOBS_ANALYSED_ROWS = "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'shoal.jobs'::regclass"
ANALYZE_JOBS = "ANALYZE shoal.jobs"  # a warning and no-op for a role that does not own the table


class CommandFailed(ShoalError):
    """The command ran but could not do all it was asked (exit 1, not 2)."""


def _db(args: argparse.Namespace) -> str:
    return database_url(args.database_url) or ""


async def _with_conn(args: argparse.Namespace, fn: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    conn = await asyncpg.connect(_db(args), timeout=CONNECT_TIMEOUT)
    try:
        return await fn(conn)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError):
        await _require_migrated(conn)
        raise
    finally:
        await conn.close()


async def _require_migrated(conn: asyncpg.Connection) -> None:
    """A missing relation or function is almost always a schema behind the CLI: say so."""
    from shoal.migrate import pending

    missing = await pending(conn)
    if missing:
        what = "no Shoal schema" if 1 in missing else f"migrations {', '.join(map(str, missing))} not applied"
        raise ConfigError(f"the database has {what}: run `shoal migrate` first")


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
                changes["keep_failed_seconds"] = None if math.isinf(args.keep_failed) else int(args.keep_failed)
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
    """Big counts stream in chunks, each its own transaction: workers drain the first chunks
    while later ones are written, and an interrupted run keeps what it committed."""
    from shoal.client import NewJob, enqueue_many

    payload, size = read_payload(args.payload, args.payload_file)
    total = args.count
    chunk = max(1, min(ENQUEUE_CHUNK, ENQUEUE_CHUNK_BYTES // max(size, 1)))
    job = NewJob(args.queue, args.task, payload, priority=args.priority, delay=args.delay,
                 max_attempts=args.max_attempts)

    async def run(conn: asyncpg.Connection) -> int:
        done, first, last = 0, None, None
        started = shown = time.monotonic()
        analyse = total > chunk
        analysed = await conn.fetchval(JOBS_ANALYSED_ROWS) if analyse else 0
        since_analyse = 0
        try:
            while done < total:
                n = min(chunk, total - done)
                ids = await enqueue_many(conn, [job] * n)
                first, last = first or ids[0], ids[-1]
                done += n
                since_analyse += n
                if analyse and done < total and since_analyse >= max(analysed, ENQUEUE_CHUNK):
                    since_analyse, before = 0, analysed
                    with contextlib.suppress(asyncpg.QueryCanceledError):  # a role's statement_timeout
                        await conn.execute(ANALYZE_JOBS)
                    analysed = await conn.fetchval(JOBS_ANALYSED_ROWS)
                    analyse = analysed > before  # not allowed to (not the table's owner): stop trying
                now = time.monotonic()
                if total > chunk and (now - shown >= 1.0 or done == total):
                    shown = now
                    rate = done / max(now - started, 1e-6)
                    print(f"enqueued {done:,}/{total:,} ({100 * done // total}%) at {rate:,.0f} jobs/s"
                          + (f", {(total - done) / rate:.0f} s left" if done < total else ""), file=sys.stderr)
        except BaseException:
            if done:
                print(f"stopped after {done:,} of {total:,} jobs; those (ids {first}..{last}) stay queued",
                      file=sys.stderr)
            raise
        print(first if total == 1 else f"enqueued {total} jobs into {args.queue} (ids {first}..{last})")
        return 0

    return await _with_conn(args, run)


async def cmd_stats(args: argparse.Namespace) -> int:
    """Constant time at any table size: counts are exact up to a cap, estimated past it, and
    say so (`~N` estimated, `>N` more than N; in JSON, `precision`). `--exact` counts every row."""
    from shoal.queues import STATES, STATS_CAP, state_counts

    async def run(conn: asyncpg.Connection) -> int:
        rows = await state_counts(conn, args.queue, exact=args.exact)
        if args.queue and not rows:
            from shoal.errors import UnknownQueueError

            raise UnknownQueueError(args.queue)
        if args.json:
            print(json.dumps([{"queue": r.queue, **{s: getattr(r, s) for s in STATES},
                               "precision": {s: r.kind(s) for s in STATES},
                               "exact_up_to": None if args.exact else STATS_CAP} for r in rows]))
        else:
            cols = ["queue", *STATES]
            print("\t".join(c.upper() for c in cols))
            for r in rows:
                print("\t".join([r.queue, *(r.shown(s) for s in STATES)]))
            if not all(r.exact for r in rows):
                print(f"~N: estimated, >N: more than N (counts are exact up to {STATS_CAP:,}; "
                      "--exact counts every row, in seconds on big tables)", file=sys.stderr)
        return 0

    return await _with_conn(args, run)


async def cmd_jobs(args: argparse.Namespace) -> int:
    from shoal import client, failures, queries

    async def run(conn: asyncpg.Connection) -> int:
        if args.jobs_command == "list":
            rows = await conn.fetch(queries.JOBS_LIST, args.queue, args.state, args.limit)
            print("ID\tQUEUE\tTASK\tSTATE\tATTEMPTS\tRUN_AT\tLAST_ERROR")
            for r in rows:
                err = failures.summary(r["last_error"])  # ends in "…" when cut: `jobs show ID` has it all
                print(f"{r['id']}\t{r['queue']}\t{r['task']}\t{r['state']}\t{r['attempts']}/{r['max_attempts']}\t"
                      f"{r['run_at'].isoformat(timespec='seconds')}\t{err}")
        elif args.jobs_command == "show":
            job = await client.get_job(conn, args.id)
            if job is None:
                print(f"error: job {args.id} not found (never existed, or deleted by retention)", file=sys.stderr)
                return 1
            errors = await client.job_history(conn, args.id)
            print(json.dumps(failures.job_json(job, errors)) if args.json else failures.format_job(job, errors))
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
            refused = {}
            for job_id in dict.fromkeys(args.ids):
                if job_id not in result:
                    job = await client.get_job(conn, job_id)
                    refused[job_id] = f"already {job['state']}" if job else "unknown job id"
                print(f"{job_id}\t{result.get(job_id) or 'not cancelled: ' + refused[job_id]}")
            if refused:
                raise CommandFailed("not cancelled: " + ", ".join(f"{i} ({why})" for i, why in refused.items()))
        return 0

    return await _with_conn(args, run)


async def cmd_worker(args: argparse.Namespace) -> int:
    from shoal.tasks import load_modules
    from shoal.worker.runner import WorkerConfig, run_worker, tune_gc

    load_modules(args.tasks)
    tune_gc()  # this process is only a worker
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
    p.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations (safe to run concurrently)")

    q = sub.add_parser("queue", help="declare and manage queues")
    qs = q.add_subparsers(dest="queue_command", required=True)
    qc = qs.add_parser("create", help="declare a queue, or update the options given")
    qc.add_argument("name")
    qc.add_argument("--rate-limit", help="at most N starts per period across all workers: 100/s, 10/m, 5/h, or none")
    qc.add_argument("--concurrency-limit", type=_non_negative_int, help="at most N jobs running at once across all pods (0: none)")
    qc.add_argument("--max-attempts", type=_positive_int, help="default attempts for jobs that do not say")
    qc.add_argument("--keep-succeeded", type=_non_negative, help="seconds to keep succeeded jobs (0: delete at once)")
    qc.add_argument("--keep-failed", type=_keep_failed, metavar="SECONDS|forever",
                    help="seconds to keep failed/cancelled jobs, or forever (the default for a new queue)")
    for name in ("pause", "resume"):
        qs.add_parser(name, help=f"{name} a queue").add_argument("name")
    qs.add_parser("list", help="list queues")

    e = sub.add_parser("enqueue", help="add jobs")
    e.add_argument("--queue", required=True)
    e.add_argument("--task", required=True)
    e.add_argument("--payload", help="JSON payload, or - to read it from stdin")
    e.add_argument("--payload-file", metavar="PATH", help="read the JSON payload from this file (any size)")
    e.add_argument("--count", type=_count, default=1,
                   help=f"this many copies, streamed in transactions of up to {ENQUEUE_CHUNK:,} jobs "
                        f"with progress on stderr (at most {MAX_ENQUEUE_COUNT:,})")
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
    w.add_argument("--stale-after", type=float, default=STALE_AFTER,
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
    s.add_argument("--json", action="store_true", help="with each count's precision: exact, estimated, more_than")
    s.add_argument("--exact", action="store_true", help="count every row (seconds at millions of jobs)")

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
    jsh = js.add_parser("show", help="one job: payload, state, and each failed attempt's error and traceback")
    jsh.add_argument("id", type=int)
    jsh.add_argument("--json", action="store_true", help="one JSON object, for machines")

    _add_extension_commands(sub)
    return p


def _add_extension_commands(sub: Any) -> None:
    """The operator and the local autoscaler add their subcommands through the `shoal.commands`
    entry points (pyproject.toml): each component keeps its own flags."""
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
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        known = (str(exc), 1) if isinstance(exc, CommandFailed) else explain(exc, args.database_url)
        if known is None:
            raise
        if args.log_level == "debug":
            traceback.print_exception(exc)
        print(f"error: {known[0]}", file=sys.stderr)
        return known[1]

