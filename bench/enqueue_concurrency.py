"""Single-job enqueue under concurrency: the web-request case.

16 producers (`--producers`) each send one job per round trip, one after the other, on a
connection of their own, for `--seconds` after a warm-up. The producers are asyncio tasks in
`--processes` client processes (default 4 processes of 4 producers; this script started again
with `--child`), so that one Python process's CPU does not cap the rate. Systems, alternating
round by round on one server (durable settings: every call commits and waits for its WAL flush):

- **shoal**: `shoal.enqueue(conn, queue, task, payload)` (asyncpg; the job checked in Python, then
  one statement, queries.ENQUEUE_ONE: the INSERT with the queue's default, then the test whether
  anyone waits for the queue's jobs, sql/015_waiter_locks.sql; nobody does, as when every worker
  is busy, so no enqueue sends a `pg_notify`);
- **shoal+waiting**: the same while a worker of the queue waits for jobs (the runner's session
  holds the queue's waiter lock, as an idle worker's listener does): every enqueue sends a
  `pg_notify`;
- **bare**: `INSERT INTO bare_enqueue (queue, task, payload, max_attempts) VALUES ($1, $2, $3, $4)
  RETURNING id`, prepared, on a plain table with shoal.jobs's columns, defaults, constraints
  and indexes (`CREATE TABLE … (LIKE shoal.jobs INCLUDING ALL)`): the cost of the row itself;
- **bare+notify**: the same INSERT with a `pg_notify` in the same statement, as a queue that
  wakes its workers must send (Shoal and Graphile Worker both do);
- **bare+notify-after**: the INSERT (durable commit), then `pg_notify` in a transaction of its own
  on a second connection with `synchronous_commit = off` (two round trips): what the notification
  costs when its commit does not wait for a WAL flush while it holds the notification queue's
  lock (see docs/benchmarks.md);
- **graphile-worker**: `SELECT id FROM graphile_worker.add_job('noop', $1::json)` over asyncpg,
  the schema installed by its own migrations (bench/peers/graphile_worker.mjs setup); run only
  when Node and bench/.peers/node are available (bench/setup_peers.py), else reported as skipped.

Per system: jobs/s over the timed window (calls completed in it), p50/p99 latency of those calls
(client wall clock around the awaited call: round trip and commit), PostgreSQL CPU per job (this
server's processes only) and the client processes' CPU per job; the median round is reported,
with Shoal ÷ bare. Writes bench/results/enqueue_concurrency.json.

    .venv/bin/python bench/enqueue_concurrency.py [--producers 16] [--processes 4] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "enqueue_concurrency.json"
QUEUE, TASK = "bench", "bench.noop"
SYSTEMS = ["shoal", "shoal+waiting", "bare", "bare+notify", "bare+notify-after", "graphile-worker"]
SCRIPT = Path(__file__).resolve()

BARE_TABLE = "CREATE TABLE IF NOT EXISTS bare_enqueue (LIKE shoal.jobs INCLUDING ALL)"
BARE_INSERT = "INSERT INTO bare_enqueue (queue, task, payload, max_attempts) VALUES ($1, $2, $3::jsonb, $4) RETURNING id"
BARE_NOTIFY = ("WITH j AS (INSERT INTO bare_enqueue (queue, task, payload, max_attempts) VALUES ($1, $2, $3::jsonb, $4) "
               "RETURNING id) SELECT id, pg_notify('bare_enqueue', $1) FROM j")
GRAPHILE_ADD = "SELECT id FROM graphile_worker.add_job('noop', $1::json)"
TABLES = {"shoal": "shoal.jobs", "shoal+waiting": "shoal.jobs", "bare": "bare_enqueue", "bare+notify": "bare_enqueue", "bare+notify-after": "bare_enqueue",
          "graphile-worker": "graphile_worker._private_jobs"}


# --------------------------------------------------------------------------- the client processes


async def child(system: str, url: str, producers: int, start_at: float, seconds: float, first_no: int) -> None:
    """`producers` tasks, one connection each, enqueueing one job per round trip from now until
    start_at + seconds; the calls that start and end inside [start_at, start_at + seconds] count."""
    from shoal import producer

    end_at = start_at + seconds
    conns = [await asyncpg.connect(url) for _ in range(producers)]
    notifiers = [await asyncpg.connect(url, server_settings={"synchronous_commit": "off"})
                 for _ in range(producers if system == "bare+notify-after" else 0)]
    latencies: list[float] = []
    done = 0
    cpu0 = cpu1 = 0.0

    async def one(k: int, conn: asyncpg.Connection, no: int) -> None:
        if system in ("shoal", "shoal+waiting"):
            await producer.enqueue(conn, QUEUE, TASK, {"n": no})
        elif system == "bare":
            await conn.fetchval(BARE_INSERT, QUEUE, TASK, json.dumps({"n": no}), 5)
        elif system == "bare+notify":
            await conn.fetchval(BARE_NOTIFY, QUEUE, TASK, json.dumps({"n": no}), 5)
        elif system == "bare+notify-after":
            await conn.fetchval(BARE_INSERT, QUEUE, TASK, json.dumps({"n": no}), 5)
            await notifiers[k].execute("SELECT pg_notify('bare_enqueue', 'bench')")
        else:
            await conn.fetchval(GRAPHILE_ADD, json.dumps({"n": no}))

    async def run(k: int, conn: asyncpg.Connection) -> None:
        nonlocal done
        no = first_no + k * 10_000_000
        while True:
            t0 = time.time()
            if t0 >= end_at:
                return
            await one(k, conn, no)
            t1 = time.time()
            no += 1
            if t0 >= start_at and t1 <= end_at:
                latencies.append(t1 - t0)
                done += 1

    async def cpu_marks() -> None:
        nonlocal cpu0, cpu1
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        cpu1 = time.process_time()

    await asyncio.gather(cpu_marks(), *(run(k, c) for k, c in enumerate(conns)))
    await asyncio.sleep(max(0.0, end_at + 1.0 - time.time()))  # no backend exits while the runner reads CPU
    for c in conns + notifiers:
        await c.close()
    print(json.dumps({"done": done, "latencies_ms": [round(x * 1e3, 3) for x in latencies], "cpu_s": cpu1 - cpu0}))


# --------------------------------------------------------------------------- the runner


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def one_round(conn: asyncpg.Connection, url: str, cpu: Any, system: str, args: argparse.Namespace,
                    round_no: int) -> dict[str, Any]:
    from shoal import queries

    await conn.execute("SELECT pg_advisory_unlock_all()")
    if system == "shoal+waiting":  # the lock an idle worker holds (sql/015_waiter_locks.sql)
        await conn.fetchval(queries.WAIT_FOR_JOBS, QUEUE)
    await conn.execute(f"TRUNCATE {TABLES[system]}")
    await conn.execute(f"VACUUM ANALYZE {TABLES[system]}")
    await conn.execute("CHECKPOINT")
    start_at = time.time() + args.warmup
    env = {**os.environ, "PYTHONSAFEPATH": "1"}  # the repository's operator/ must not shadow the stdlib's
    env.pop("PYTHONPATH", None)
    per = [args.producers // args.processes + (i < args.producers % args.processes) for i in range(args.processes)]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--child", system, "--url", url, "--producers", str(n),
        "--start-at", repr(start_at), "--seconds", str(args.seconds), "--first-no", str(i * 100_000_000),
        stdout=asyncio.subprocess.PIPE, env=env, cwd=BENCH) for i, n in enumerate(per) if n]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    pg0 = cpu.seconds() if cpu else None
    waits: dict[str, int] = {}
    samples = 0
    while time.time() < start_at + args.seconds - 0.25:  # what the producers' backends wait on
        await asyncio.sleep(0.25)
        samples += 1
        for row in await conn.fetch(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS w FROM pg_stat_activity "
                "WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"):
            waits[row["w"]] = waits.get(row["w"], 0) + 1
    await asyncio.sleep(max(0.0, start_at + args.seconds - time.time()))
    pg1 = cpu.seconds() if cpu else None
    outs = [json.loads((await p.communicate())[0].decode().strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{system}: a client process failed")
    done = sum(o["done"] for o in outs)
    lat = [x for o in outs for x in o["latencies_ms"]]
    res = {"round": round_no, "jobs": done, "jobs_per_s": done / args.seconds,
           "p50_ms": statistics.median(lat), "p99_ms": _pct(lat, 0.99), "max_ms": max(lat),
           "pg_us_per_job": (pg1 - pg0) / done * 1e6 if pg0 is not None and pg1 is not None else None,
           "client_us_per_job": sum(o["cpu_s"] for o in outs) / done * 1e6,
           "backends_waiting_per_sample": {k: round(v / max(samples, 1), 2)
                                           for k, v in sorted(waits.items(), key=lambda kv: -kv[1])[:5]}}
    pg = "-" if res["pg_us_per_job"] is None else f"{res['pg_us_per_job']:.0f}"
    print(f"[{time.strftime('%H:%M:%S')}] round {round_no + 1} {system:16}: {res['jobs_per_s']:8,.0f} jobs/s, "
          f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms; CPU per job: PostgreSQL {pg} us, "
          f"clients {res['client_us_per_job']:.0f} us; backends {res['backends_waiting_per_sample']}", flush=True)
    return res


def graphile_schema(url: str) -> str | None:
    """Install Graphile Worker's schema with its own migrations; None when it cannot run here."""
    sys.path.insert(0, str(BENCH))
    import setup_peers

    env = setup_peers.PeerEnv()
    setup_peers.ensure_node(env, lambda m: print(f"[setup] {m}", flush=True))
    if "graphile-worker" in env.unavailable or env.node is None or env.node_dir is None:
        print(f"graphile-worker skipped: {env.unavailable.get('graphile-worker', 'Node not found')}")
        return None
    res = subprocess.run([env.node, str(BENCH / "peers" / "graphile_worker.mjs"), "setup", "--url", url],
                         env={**os.environ, "BENCH_NODE_DIR": str(env.node_dir)}, cwd=BENCH / "peers",
                         capture_output=True, text=True, check=False, timeout=300)
    if res.returncode != 0:
        print(f"graphile-worker skipped: its setup failed: {res.stderr.strip()[-300:]}")
        return None
    return f"graphile-worker {env.node_versions.get('graphile-worker')}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from shoal import queues
    from shoal.migrate import migrate
    from shoal.testing.postgres import database

    sys.path.insert(0, str(BENCH))
    from workers_scaling import server_cpu  # bench/workers_scaling.py: this server's CPU only

    systems = [s.strip() for s in args.systems.split(",")]
    started = time.time()
    out: dict[str, Any] = {"systems": {}}
    with database("shoal-enqueue-conc-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await queues.declare_queue(conn, QUEUE)
        await conn.execute(BARE_TABLE)
        cpu = await server_cpu(conn)
        versions = {"shoal": "shoal (this tree)", "shoal+waiting": "shoal (this tree)",
                    **{s: f"asyncpg {asyncpg.__version__}" for s in ("bare", "bare+notify", "bare+notify-after")}}
        if "graphile-worker" in systems:
            version = await asyncio.to_thread(graphile_schema, url)
            if version is None:
                systems.remove("graphile-worker")
                out["systems"]["graphile-worker"] = {"status": "skipped"}
            else:
                versions["graphile-worker"] = version
        rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for round_no in range(args.rounds):
            for system in systems:
                rounds[system].append(await one_round(conn, url, cpu, system, args, round_no))
        server_version = await conn.fetchval("SHOW server_version")
        await conn.close()
    for system, rs in rounds.items():
        median = sorted(rs, key=lambda r: r["jobs_per_s"])[(len(rs) - 1) // 2]
        out["systems"][system] = {"status": "ok", "version": versions[system], **median,
                                  "rounds_jobs_per_s": [r["jobs_per_s"] for r in rs]}
    ok = {s: r for s, r in out["systems"].items() if r.get("status") == "ok"}
    print()
    print("| system | jobs/s (median round) | p50 ms | p99 ms | PostgreSQL CPU us/job | client CPU us/job | "
          "Shoal / this (jobs/s) | rounds jobs/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for system, r in ok.items():
        ratio = ok["shoal"]["jobs_per_s"] / r["jobs_per_s"] if "shoal" in ok else None
        pg = "-" if r["pg_us_per_job"] is None else f"{r['pg_us_per_job']:.0f}"
        print(f"| {system} | {r['jobs_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {pg} | "
              f"{r['client_us_per_job']:.0f} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
              f"{' / '.join(f'{x:,.0f}' for x in r['rounds_jobs_per_s'])} |")
    if "shoal" in ok and "bare" in ok:
        out["shoal_over_bare"] = ok["shoal"]["jobs_per_s"] / ok["bare"]["jobs_per_s"]
        print(f"\nShoal / bare INSERT: {out['shoal_over_bare']:.2f}x (goal >= 0.9x)")
    if "shoal+waiting" in ok and "bare+notify" in ok:
        out["shoal_waiting_over_bare_notify"] = ok["shoal+waiting"]["jobs_per_s"] / ok["bare+notify"]["jobs_per_s"]
        print(f"Shoal with a waiting worker / bare INSERT + pg_notify: {out['shoal_waiting_over_bare_notify']:.2f}x")
    out.update({
        "command": "python bench/enqueue_concurrency.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "duration_s": time.time() - started,
        "producers": args.producers, "processes": args.processes, "seconds": args.seconds, "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "postgres": server_version,
                    "python": platform.python_version(), "asyncpg": asyncpg.__version__},
    })
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--producers", type=int, default=16)
    p.add_argument("--processes", type=int, default=4, help="client processes the producers are spread over")
    p.add_argument("--seconds", type=float, default=10.0, help="timed window per round")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds from the clients' start to the window")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--output", default=str(RESULTS), help="JSON results file ('' for none)")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--first-no", type=int, default=0, help=argparse.SUPPRESS)
    cli = p.parse_args()
    if cli.child:
        asyncio.run(child(cli.child, cli.url, cli.producers, cli.start_at, cli.seconds, cli.first_no))
        sys.exit(0)
    result = asyncio.run(main(cli))
    if cli.output:
        Path(cli.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cli.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {cli.output}")
