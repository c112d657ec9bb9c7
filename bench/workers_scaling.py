"""Cost as workers grow: a large backlog drained by 1, 2, 4 and 8 worker processes.

For each process count N, on one server and in one run:

- **shoal**: `--jobs` no-op jobs (`shoal.noop`, 1,000,000 by default) are written straight into
  shoal.jobs (`INSERT … SELECT generate_series`), `VACUUM ANALYZE` + `CHECKPOINT`, then N real
  `shoal worker --concurrency 50` processes (python -m shoal.cli, as `shoal.testing.workers` starts
  them; `--concurrency` sets another, e.g. 500 as in the drain sprint) drain the queue;
- **bare**: the bare reference loop of bench/peers/bare_bench.py (claim-and-delete, 100 rows per
  claim, two claim loops per process, at-most-once, no features) on the same number of jobs in its
  own table, with N processes.

Measured for each (PostgreSQL's CPU is the server's own: the postmaster found from
`data_directory`/postmaster.pid, its reaped children's CPU and every live child's utime+stime):

- whole drain: from the workers' spawn until no job is left (start-up included): jobs/s and
  PostgreSQL CPU per job;
- steady window: from 5% to 85% of the backlog done (progress read cheaply from the lowest
  remaining id; exact counts at the two ends): jobs/s, PostgreSQL CPU per job and the workers'
  CPU per job (their interpreter start-up is outside the window);
- what the server did per job over the whole drain (pg_stat_database blocks, pg_stat_wal bytes,
  commits), the backends' wait events sampled every 0.5 s, and one claim run under
  `EXPLAIN (ANALYZE, BUFFERS)` in a rolled-back transaction (at 30, 40, 50, 60 and 70% done; the
  median is reported): how many rows it stepped over
  (rows the workers hold locked) and how many buffers it touched.

Prints a table and writes bench/results/workers_scaling.json.

    .venv/bin/python bench/workers_scaling.py                         # 1M jobs, 1,2,4,8 processes
    .venv/bin/python bench/workers_scaling.py --jobs 50000 --procs 1,2  # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from shoal import queues
from shoal.migrate import migrate
from shoal.testing.postgres import database

BENCH = Path(__file__).resolve().parent
BARE = BENCH / "peers" / "bare_bench.py"
RESULTS = BENCH / "results" / "workers_scaling.json"
QUEUE = "scale"
CONCURRENCY = 50
WINDOW = (0.05, 0.85)  # the steady window, as fractions of the backlog done
EXPLAIN_AT = (0.3, 0.4, 0.5, 0.6, 0.7)  # one claim under EXPLAIN at these fractions done
BARE_CLAIM_ROWS = 100  # rows one claim of the bare loop asks for (Shoal's: its capacity, 3 x concurrency)

# The claim each system sends, as a plain SELECT ... FOR UPDATE SKIP LOCKED for EXPLAIN (shoal's:
# the quick claim of sql/013_claim_past_held.sql, which a worker sends between full scans).
EXPLAIN_CLAIM = {
    "shoal": """SELECT c.id FROM shoal.jobs c
                 WHERE c.queue = 'scale' AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= clock_timestamp()
                   AND age(c.xmax) > (SELECT age(xid(pg_snapshot_xmin(pg_current_snapshot()))))
                 ORDER BY c.priority DESC, c.run_at, c.id LIMIT {n} FOR UPDATE SKIP LOCKED""",
    "bare": "SELECT id FROM bare_jobs ORDER BY id LIMIT {n} FOR UPDATE SKIP LOCKED",
}
TABLE = {"shoal": "shoal.jobs", "bare": "bare_jobs"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- CPU accounting


class ServerCpu:
    """CPU seconds used by one PostgreSQL server: the postmaster, the children it has reaped
    (backends of closed connections) and every live child (backends, WAL writer, checkpointer,
    autovacuum). Only this server's processes, not other PostgreSQL servers on the machine."""

    def __init__(self, postmaster_pid: int) -> None:
        self.postmaster = psutil.Process(postmaster_pid)

    def seconds(self) -> float:
        """A backend that exits between reading the postmaster's reaped-children time and listing
        its live children would be missed (or, the other way round, counted twice): read again
        until no child was reaped during the reading."""
        for _ in range(10):
            before = self._own()
            live = 0.0
            for child in self.postmaster.children():
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    live += c.user + c.system
            if self._own() == before:
                break
        return before + live

    def _own(self) -> float:
        t = self.postmaster.cpu_times()
        return t.user + t.system + t.children_user + t.children_system


async def server_cpu(conn: asyncpg.Connection) -> ServerCpu | None:
    data_dir = Path(await conn.fetchval("SHOW data_directory"))
    try:
        return ServerCpu(int((data_dir / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, psutil.Error):  # a server on another machine ($SHOAL_DATABASE_URL)
        return None


def process_cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


# --------------------------------------------------------------------------- the two systems


def spawn(system: str, url: str, n: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    """N worker processes. Shoal's as `shoal.testing.workers.spawn_worker` starts them, with a
    safe sys.path (the repository's `operator/` folder must not shadow the standard library);
    the bare loop's through its adapter, which imports `_common` from its own folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if system == "shoal":
        argv = [sys.executable, "-m", "shoal.cli", "--log-level", "warning", "worker", "--queue", QUEUE,
                "--concurrency", str(concurrency)]
        env |= {"SHOAL_DATABASE_URL": url, "PYTHONSAFEPATH": "1"}
    else:
        argv = [sys.executable, str(BARE), "worker", "--url", url]
    return [subprocess.Popen(argv, env=env, cwd=BENCH, stdout=subprocess.DEVNULL) for _ in range(n)]


async def fill(conn: asyncpg.Connection, url: str, system: str, jobs: int) -> tuple[int, int]:
    """`jobs` pending jobs in an empty table, vacuumed and checkpointed; (first id, last id)."""
    if system == "shoal":
        await conn.execute("TRUNCATE shoal.jobs")
        for start in range(0, jobs, 1_000_000):
            await conn.execute(
                "INSERT INTO shoal.jobs (queue, task, payload, max_attempts) "
                "SELECT $1, 'shoal.noop', jsonb_build_object('n', g), 5 FROM generate_series($2::int, $3::int) g",
                QUEUE, start, min(jobs, start + 1_000_000) - 1)
    else:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
        await asyncio.to_thread(subprocess.run, [sys.executable, str(BARE), "setup", "--url", url], check=True,
                                capture_output=True, env=env)
        await conn.execute("TRUNCATE bare_jobs")
        # The adapter's enqueue is INSERT ... unnest($1) by 5,000; generate_series makes the same rows faster.
        await conn.execute("INSERT INTO bare_jobs (payload) SELECT jsonb_build_object('n', g) "
                           "FROM generate_series(0, $1::int - 1) g", jobs)
    table = TABLE[system]
    await conn.execute(f"VACUUM ANALYZE {table}")
    await conn.execute("CHECKPOINT")
    first, last = await conn.fetchrow(f"SELECT min(id), max(id) FROM {table}")  # noqa: S608 (fixed names)
    return int(first), int(last)


# --------------------------------------------------------------------------- one drain


async def db_stats(conn: asyncpg.Connection) -> dict[str, float]:
    # This backend's own pending counters (the fill, VACUUM) are reported when it next goes idle:
    # force that report, else they would land in the drain's figures.
    await conn.execute("SELECT pg_stat_force_next_flush()")
    row = await conn.fetchrow(
        "SELECT d.xact_commit, d.xact_rollback, d.blks_hit, d.blks_read, d.tup_fetched, d.tup_deleted, "
        "d.tup_updated, w.wal_records, w.wal_fpi, w.wal_bytes "
        "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()")
    return {k: float(v) for k, v in row.items()}


async def explain_claim(url: str, system: str, concurrency: int) -> dict[str, Any]:
    """One claim, as the system sends it, under EXPLAIN (ANALYZE, BUFFERS), rolled back: the rows
    its index scan fetched beyond the LIMIT are rows other workers hold locked (SKIP LOCKED steps
    over them one heap fetch each; Shoal's quick claim filters them out before trying a lock) or
    dead rows the index still points at."""
    conn = await asyncpg.connect(url)
    n = 3 * concurrency if system == "shoal" else BARE_CLAIM_ROWS
    tx = conn.transaction()
    await tx.start()
    try:
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {EXPLAIN_CLAIM[system].format(n=n)}")
    finally:
        await tx.rollback()  # the rows it locked go back to the workers at once
        await conn.close()
    top = json.loads(plan)[0]

    def scan(node: dict[str, Any]) -> dict[str, Any] | None:
        if "Scan" in node["Node Type"]:
            return node
        for child in node.get("Plans", []):
            if (found := scan(child)) is not None:
                return found
        return None

    plan_root = top["Plan"]
    leaf = scan(plan_root) or plan_root
    scanned = int(leaf["Actual Rows"]) + int(leaf.get("Rows Removed by Filter", 0))
    return {"limit": n, "claimed": int(plan_root["Actual Rows"]), "scan_rows": scanned,
            "stepped_over": scanned - int(plan_root["Actual Rows"]),
            "shared_hit_blocks": int(plan_root.get("Shared Hit Blocks", 0)),
            "shared_read_blocks": int(plan_root.get("Shared Read Blocks", 0)),
            "ms": float(top.get("Execution Time", 0.0)), "scan": leaf["Node Type"]}


def _median_claim(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not samples:
        return None
    keys = ("stepped_over", "shared_hit_blocks", "ms", "claimed")
    return {k: statistics.median(x[k] for x in samples) for k in keys} | {"samples": len(samples)}


async def drain(conn: asyncpg.Connection, url: str, cpu: ServerCpu | None, system: str, n: int,
                jobs: int, concurrency: int) -> dict[str, Any]:
    log(f"[{system} x{n}] filling {jobs:,} jobs")
    first, _ = await fill(conn, url, system, jobs)
    table = TABLE[system]
    exists = f"SELECT EXISTS (SELECT 1 FROM {table})"  # noqa: S608 (fixed names)
    lowest = f"SELECT min(id) FROM {table}"  # noqa: S608  (cheap: the primary key's first live entry)
    count = f"SELECT count(*) FROM {table}"  # noqa: S608
    stats0 = await db_stats(conn)
    pg0 = cpu.seconds() if cpu else None
    t0 = time.perf_counter()
    workers = spawn(system, url, n, concurrency)
    procs = [psutil.Process(w.pid) for w in workers]
    marks: dict[str, dict[str, float]] = {}
    waits: dict[str, int] = {}
    samples = 0
    explains: list[dict[str, Any]] = []
    next_wait_sample = 0.0
    try:
        while True:
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(min(0.25, max(0.02, elapsed / 100)))
            if not await conn.fetchval(exists):
                break
            dead = [w for w in workers if w.poll() is not None]
            if dead:
                raise RuntimeError(f"{system} worker exited with {dead[0].returncode}")
            low = await conn.fetchval(lowest)
            done_frac = (int(low) - first) / jobs if low is not None else 1.0
            for name, at in (("start", WINDOW[0]), ("end", WINDOW[1])):
                if name not in marks and done_frac >= at and (name == "start" or "start" in marks):
                    pg = cpu.seconds() if cpu else float("nan")
                    w = process_cpu(procs)
                    left = await conn.fetchval(count)
                    marks[name] = {"t": time.perf_counter(), "left": float(left), "pg": pg, "worker": w}
            if len(explains) < len(EXPLAIN_AT) and done_frac >= EXPLAIN_AT[len(explains)]:
                explains.append({"done": round(done_frac, 3), **await explain_claim(url, system, concurrency)})
            if time.perf_counter() >= next_wait_sample:
                next_wait_sample = time.perf_counter() + 0.5
                samples += 1
                for row in await conn.fetch(
                        "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS w FROM pg_stat_activity "
                        "WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"):
                    waits[row["w"]] = waits.get(row["w"], 0) + 1
        seconds = time.perf_counter() - t0
        pg1 = cpu.seconds() if cpu else None
        worker_total = process_cpu(procs)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    await asyncio.sleep(1.2)  # the backends that just closed have flushed their statistics
    stats1 = await db_stats(conn)
    out: dict[str, Any] = {
        "system": system, "procs": n, "jobs": jobs, "seconds": seconds, "jobs_per_s": jobs / seconds,
        "pg_us_per_job": (pg1 - pg0) / jobs * 1e6 if cpu and pg0 is not None and pg1 is not None else None,
        "worker_us_per_job_with_startup": worker_total / jobs * 1e6,
        "per_job": {k: (stats1[k] - stats0[k]) / jobs for k in stats0},
        "wait_samples": samples,
        "waits_per_sample": {k: round(v / max(samples, 1), 2)
                             for k, v in sorted(waits.items(), key=lambda kv: -kv[1])[:6]},
        "explain_claim": _median_claim(explains),
        "explain_claim_samples": explains,
    }
    if "start" in marks and "end" in marks:
        a, b = marks["start"], marks["end"]
        done = a["left"] - b["left"]
        if done > 0:
            out["steady"] = {"jobs": int(done), "seconds": b["t"] - a["t"], "jobs_per_s": done / (b["t"] - a["t"]),
                             "pg_us_per_job": (b["pg"] - a["pg"]) / done * 1e6 if cpu else None,
                             "worker_us_per_job": (b["worker"] - a["worker"]) / done * 1e6}
    steady = out.get("steady", {})
    log(f"[{system} x{n}] {out['jobs_per_s']:,.0f} jobs/s over {seconds:.1f}s; PostgreSQL "
        f"{_us(out['pg_us_per_job'])} us/job (whole), steady {_rate(steady.get('jobs_per_s'))} jobs/s, "
        f"PostgreSQL {_us(steady.get('pg_us_per_job'))} / workers {_us(steady.get('worker_us_per_job'))} us/job")
    return out


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


# --------------------------------------------------------------------------- report


def pg_per_job(r: dict[str, Any]) -> float | None:
    """The steady window's figure when there was one, else the whole drain's."""
    steady = r.get("steady", {}).get("pg_us_per_job")
    return steady if steady is not None else r.get("pg_us_per_job")


def fit_line(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares y = a + b*x."""
    if len(points) < 3:  # two points fix a line but say nothing of its shape
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return {"a": my - b * mx, "b": b}


def render(results: list[dict[str, Any]]) -> str:
    by = {(r["system"], r["procs"]): r for r in results}
    lines = ["| system | procs | jobs/s whole / steady | PostgreSQL CPU per job, us (= ms per 1,000 jobs): whole "
             "/ steady | steady PG CPU/job vs 1 process | worker CPU per job, us (steady) | per job: buffers / rows "
             "fetched / WAL bytes | one claim (median of 5, 30-70% done): rows stepped over / buffers / ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        steady = r.get("steady", {})
        base = by.get((r["system"], min(p for s, p in by if s == r["system"])))
        ratio = (pg_per_job(r) / pg_per_job(base)) if base and pg_per_job(base) and pg_per_job(r) else None
        pj = r["per_job"]
        ex = r.get("explain_claim") or {}
        lines.append(
            f"| {r['system']} | {r['procs']} | {r['jobs_per_s']:,.0f} / {_rate(steady.get('jobs_per_s'))} | "
            f"{_us(r['pg_us_per_job'])} / {_us(steady.get('pg_us_per_job'))} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | {_us(steady.get('worker_us_per_job'))} | "
            f"{pj['blks_hit'] + pj['blks_read']:.1f} / {pj['tup_fetched']:.2f} / {pj['wal_bytes']:.0f} | "
            f"{ex.get('stepped_over', '-')} / {ex.get('shared_hit_blocks', '-')} / {ex.get('ms', '-')} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    procs = [int(p) for p in args.procs.split(",")]
    systems = [s.strip() for s in args.systems.split(",")]
    started = time.time()
    results: list[dict[str, Any]] = []
    with database("shoal-scaling-") as url:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await queues.declare_queue(conn, QUEUE)
        cpu = await server_cpu(conn)
        if cpu is None:
            log("PostgreSQL is not on this machine: its CPU is not measured")
        version = await conn.fetchval("SHOW server_version")
        for n in procs:
            for system in systems:  # alternating, so that the machine's drift falls on both alike
                results.append(await drain(conn, url, cpu, system, n, args.jobs, args.concurrency))
        await conn.close()
    fits = {}
    for system in systems:
        pts = [(float(r["procs"]), v) for r in results if r["system"] == system and (v := pg_per_job(r)) is not None]
        line = fit_line(pts)
        if line:
            fits[system] = {**line, "pg_us_per_job_at_50": line["a"] + 50 * line["b"],
                            "ratio_50_to_1": (line["a"] + 50 * line["b"]) / (line["a"] + line["b"])}
    table = render(results)
    print()
    print(table)
    for system, f in fits.items():
        print(f"{system}: PostgreSQL us/job ~ {f['a']:.2f} + {f['b']:.3f} x processes (least squares); "
              f"at 50 processes ~ {f['pg_us_per_job_at_50']:.1f} us/job ({f['ratio_50_to_1']:.2f}x the 1-process fit)")
    report = {
        "command": "python bench/workers_scaling.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "duration_s": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "postgres": version,
                    "python": platform.python_version(), "asyncpg": asyncpg.__version__},
        "jobs": args.jobs, "concurrency": args.concurrency, "window": WINDOW,
        "results": results, "linear_fit_pg_us_per_job": fits,
    }
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--procs", default="1,2,4,8", help="comma-separated worker process counts")
    p.add_argument("--systems", default="shoal,bare", help="shoal, bare or both")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY,
                   help="each Shoal worker's --concurrency (its claims ask for up to 3x as many rows)")
    p.add_argument("--output", default=str(RESULTS), help="JSON results file ('' for none)")
    cli = p.parse_args()
    result = asyncio.run(main(cli))
    if cli.output:
        Path(cli.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cli.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {cli.output}")
