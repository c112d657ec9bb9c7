"""Shoal against its peers, same PostgreSQL, same run.

    python bench/run.py                      # 50,000 jobs, 50 pickups, every system
    python bench/run.py --quick              # 5,000 jobs, 10 pickups (development)
    python bench/run.py --only bare,pgqueuer --jobs 20000

One embedded PostgreSQL 16 (pgserver binaries, durable settings: fsync on) is started in
bench/.peers/pgdata; every system gets a fresh database per workload, and the systems run
one after the other. Each system runs in its own interpreter through an adapter script in
bench/peers/ (protocol: bench/peers/_common.py); the peers are installed into
bench/.peers/ by bench/setup_peers.py.

Workloads: (a) batch enqueue N; (b) drain N no-op jobs with one and with two worker
processes; (c) pickup latency of one job sent to an idle worker; peak worker RSS. Then,
Shoal only: (d) ready-count query cost at 100k, 1M and 10M pending jobs (10M skipped by
--quick); (e) burst -> autoscaler scale-up decision, with and without the LISTEN wake-up;
(f) resident memory of a worker and of `shoal operator` (against the Kubernetes emulator
of shoal.testing, testing/k8s/emulator.py); (g) a rate-limited queue with retries under load.

Writes bench/results/latest.json (--output to write elsewhere) and, for full runs, the generated part of
docs/benchmarks.md. Worker/producer stderr goes to bench/.peers/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import docs_section  # bench/docs_section.py: a script's own folder is first on sys.path
import psutil
import setup_peers

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_DIR = BENCH / "peers"
STATE = BENCH / ".peers"
LOGS = STATE / "logs"
RESULTS = BENCH / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


# The targets' yardsticks (Graphile Worker, the bare loop) run right after Shoal, the slow peers last,
# so that within a workload the compared runs are seconds apart, not minutes.
ALL_SYSTEMS = ["shoal", "graphile-worker", "bare", "pgqueuer", "pg-boss", "procrastinate"]
PEER_LANG = {"shoal": "project", "bare": "project", "pgqueuer": "peer-py", "procrastinate": "peer-py",
             "graphile-worker": "node", "pg-boss": "node"}
ADAPTERS = {"shoal": "shoal_bench.py", "bare": "bare_bench.py", "pgqueuer": "pgqueuer_bench.py",
            "procrastinate": "procrastinate_bench.py", "graphile-worker": "graphile_worker.mjs",
            "pg-boss": "pg_boss.mjs"}
WORKLOADS = ["enqueue", "drain1", "drain2", "latency"]
SHOAL_ONLY = {
    "ready_count_cost": "(d) cost of Shoal's ready-count query at 100k, 1M and 10M jobs",
    "autoscale_reaction": "(e) burst lands -> desired replicas raised (local backend)",
    "operator_memory": "(f) resident memory of the operator",
    "mixed_retries_rate_limit": "(g) mixed run with retries and a rate-limited queue under load",
}

START = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {msg}", flush=True)


class Pending(Exception):
    """The adapter is not written yet (raises NotImplementedError)."""


class AdapterError(Exception):
    pass


# --------------------------------------------------------------------------- adapters


@dataclass
class System:
    name: str
    cmd: list[str]
    env: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)  # from `setup`: version, remaining_sql, config

    def argv(self, command: str, url: str, *extra: str) -> list[str]:
        return [*self.cmd, command, "--url", url, *extra]


def make_system(name: str, peers: setup_peers.PeerEnv) -> System | str:
    """The adapter command for `name`, or why it cannot run."""
    script = str(PEERS_DIR / ADAPTERS[name])
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    lang = PEER_LANG[name]
    if lang == "project":
        return System(name, [sys.executable, script], env)
    if name in peers.unavailable:
        return peers.unavailable[name]
    if lang == "peer-py":
        assert peers.python is not None
        return System(name, [str(peers.python), script], env)
    assert peers.node is not None and peers.node_dir is not None
    env["BENCH_NODE_DIR"] = str(peers.node_dir)
    return System(name, [peers.node, script], env)


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise AdapterError(f"no JSON line in output: {stdout[-300:]!r}")


async def run_once(system: System, argv: list[str], limit_s: float, log_name: str) -> dict[str, Any]:
    LOGS.mkdir(parents=True, exist_ok=True)
    err_path = LOGS / f"{log_name}.log"
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=err,
                                                    cwd=PEERS_DIR, env=system.env)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AdapterError(f"{log_name} timed out after {limit_s:.0f}s") from None
    stderr = err_path.read_text(errors="replace")
    if proc.returncode != 0:
        if "NotImplementedError" in stderr:
            raise Pending(stderr.strip().splitlines()[-1])
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise AdapterError(f"exit {proc.returncode}: {tail[-500:]}")
    return _last_json(out.decode())


class Proc:
    """A long-running adapter process (worker or producer) whose stdout lines we parse."""

    def __init__(self, system: System, argv: list[str], log_name: str) -> None:
        self.system, self.argv, self.log_name = system, argv, log_name
        self.ready_at: float | None = None
        self.events: dict[tuple[str, int], float] = {}
        self.changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._err: Any = None

    async def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self._err = (LOGS / f"{self.log_name}.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._err,
            cwd=PEERS_DIR, env=self.system.env, start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            parts = line.decode(errors="replace").split()
            if len(parts) == 2 and parts[0] == "READY":
                self.ready_at = float(parts[1])
            elif len(parts) == 3 and parts[0] in ("RUN", "SENT"):
                self.events.setdefault((parts[0], int(parts[1])), float(parts[2]))
            else:
                continue
            self.changed.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def stderr_tail(self) -> str:
        path = LOGS / f"{self.log_name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(lines[-3:])[-500:]

    async def wait_for(self, pred: Callable[[], Any], limit_s: float, what: str) -> Any:
        deadline = time.monotonic() + limit_s
        while True:
            value = pred()
            if value is not None:
                return value
            if not self.alive():
                tail = self.stderr_tail()
                if "NotImplementedError" in tail:
                    raise Pending(tail)
                raise AdapterError(f"{self.log_name} exited ({self.proc.returncode if self.proc else '?'}) "
                                   f"waiting for {what}: {tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AdapterError(f"{self.log_name}: timed out after {limit_s:.0f}s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    async def send(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        if self._err is not None:
            self._err.close()


class RssSampler:
    """Peak resident memory of each worker process (with its children), sampled every 50 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.peak: dict[int, int] = dict.fromkeys(pids, 0)
        self._task = asyncio.create_task(self._run())

    def _sample(self) -> None:
        for pid in self.peak:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                rss = p.memory_info().rss + sum(
                    ch.memory_info().rss for ch in p.children(recursive=True) if ch.is_running())
                self.peak[pid] = max(self.peak[pid], rss)

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0.05)

    async def stop(self) -> float:
        self._sample()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return max(self.peak.values(), default=0) / 2**20


# --------------------------------------------------------------------------- database


class Server:
    def __init__(self, fast_unsafe: bool) -> None:
        from shoal.embedded import start_embedded

        data = STATE / "pgdata"
        # A fresh cluster per invocation: no bloat or statistics carried over.
        with contextlib.suppress(Exception):
            from shoal.embedded import EmbeddedPostgres

            port_file = data.parent / "pgdata.port"
            if port_file.exists():
                EmbeddedPostgres(data.resolve(), int(port_file.read_text())).stop("immediate")
                port_file.unlink()
        shutil.rmtree(data, ignore_errors=True)
        self.pg = start_embedded(data, fast_unsafe=fast_unsafe)
        self.base_url = self.pg.url

    def url(self, db: str) -> str:
        return self.base_url.rsplit("/", 1)[0] + "/" + db

    async def admin(self, sql: str) -> Any:
        conn = await asyncpg.connect(self.base_url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def fresh_db(self, name: str) -> str:
        await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def drop_db(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self.pg.destroy()


# --------------------------------------------------------------------------- workloads


async def setup_db(server: Server, system: System, workload: str) -> tuple[str, str]:
    db = f"bench_{system.name.replace('-', '_')}_{workload}"
    url = await server.fresh_db(db)
    info = await run_once(system, system.argv("setup", url), 300, f"{system.name}-{workload}-setup")
    system.info = info
    return db, url


async def w_enqueue(server: Server, system: System, jobs: int, **_: Any) -> dict[str, Any]:
    db, url = await setup_db(server, system, "enqueue")
    try:
        log(f"[{system.name}] enqueue: inserting {jobs:,} jobs with the batch API")
        res = await run_once(system, system.argv("enqueue", url, "--jobs", str(jobs)), 900,
                             f"{system.name}-enqueue")
        conn = await asyncpg.connect(url)
        try:
            remaining = int(await conn.fetchval(system.info["remaining_sql"]))
        finally:
            await conn.close()
        if remaining != jobs:
            raise AdapterError(f"enqueue reported {jobs} jobs but {remaining} are queued")
        rate = jobs / res["seconds"]
        log(f"[{system.name}] enqueue: {rate:,.0f} jobs/s ({res['seconds']:.2f}s)")
        return {"jobs": jobs, "seconds": res["seconds"], "jobs_per_s": rate}
    finally:
        await server.drop_db(db)


async def w_drain(server: Server, system: System, jobs: int, workers: int, **_: Any) -> dict[str, Any]:
    wl = f"drain{workers}"
    db, url = await setup_db(server, system, wl)
    procs: list[Proc] = []
    sampler: RssSampler | None = None
    conn = await asyncpg.connect(url)
    try:
        log(f"[{system.name}] drain x{workers}: preparing {jobs:,} jobs")
        await run_once(system, system.argv("enqueue", url, "--jobs", str(jobs)), 900, f"{system.name}-{wl}-prep")
        remaining_sql = system.info["remaining_sql"]
        left_sql = _any_left_sql(remaining_sql)
        await conn.execute("CHECKPOINT")
        await conn.execute("VACUUM ANALYZE")
        procs = [Proc(system, system.argv("worker", url), f"{system.name}-{wl}-worker{i}") for i in range(workers)]
        for p in procs:
            await p.start()
        sampler = RssSampler([p.pid for p in procs])
        for p in procs:
            await p.wait_for(lambda p=p: p.ready_at, 120, "READY")
        t0 = min(p.ready_at for p in procs if p.ready_at is not None)
        timeout = max(300.0, min(1800.0, jobs / 30))
        last_report = time.time()
        while True:
            elapsed = time.time() - t0
            if not await conn.fetchval(left_sql):
                break
            if not all(p.alive() for p in procs):
                dead = next(p for p in procs if not p.alive())
                raise AdapterError(f"{dead.log_name} exited: {dead.stderr_tail()}")
            if elapsed > timeout:
                done = jobs - int(await conn.fetchval(remaining_sql))
                log(f"[{system.name}] drain x{workers}: TIMEOUT after {elapsed:.0f}s, {done:,} done")
                rss = await sampler.stop()
                sampler = None
                return {"jobs": jobs, "workers": workers, "seconds": elapsed, "jobs_per_s": done / elapsed,
                        "timeout": True, "worker_rss_mb": rss}
            if time.time() - last_report >= 2:
                last_report = time.time()
                done = jobs - int(await conn.fetchval(remaining_sql))
                log(f"[{system.name}] drain x{workers}: {done:,}/{jobs:,} done, "
                    f"{done / max(elapsed, 1e-9):,.0f} jobs/s so far")
            # Poll often enough to keep the end-time error under ~1% without loading the server.
            await asyncio.sleep(min(0.5, max(0.01, elapsed / 100)))
        seconds = time.time() - t0
        rss = await sampler.stop()
        sampler = None
        if (left := int(await conn.fetchval(remaining_sql))) != 0:
            raise AdapterError(f"{system.name}: the existence check saw no job left but the count says {left}")
        rate = jobs / seconds
        log(f"[{system.name}] drain x{workers}: {rate:,.0f} jobs/s ({seconds:.2f}s), worker RSS {rss:.0f} MB")
        return {"jobs": jobs, "workers": workers, "seconds": seconds, "jobs_per_s": rate, "worker_rss_mb": rss}
    finally:
        if sampler is not None:
            await sampler.stop()
        for p in procs:
            await p.stop()
        await conn.close()
        await server.drop_db(db)


def _any_left_sql(remaining_sql: str) -> str:
    """The drain's end test, derived from the adapter's `SELECT count(*) FROM …`: an EXISTS stops
    at the first unfinished job, where a count reads them all. Polled every 10 ms, the count was
    a measurable load on the server being measured (several ms per poll at 50k jobs), and that
    load weighed most on the fastest systems, whose drains are shortest."""
    prefix = "SELECT count(*) FROM "
    if not remaining_sql.startswith(prefix):
        raise AdapterError(f"remaining_sql must start with {prefix!r}: {remaining_sql!r}")
    return f"SELECT EXISTS (SELECT 1 FROM {remaining_sql[len(prefix):]})"  # noqa: S608 - the adapter's own SQL


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def w_latency(server: Server, system: System, pickups: int, **_: Any) -> dict[str, Any]:
    db, url = await setup_db(server, system, "latency")
    worker = Proc(system, system.argv("worker", url, "--latency"), f"{system.name}-latency-worker")
    producer = Proc(system, system.argv("produce", url), f"{system.name}-latency-producer")
    sampler: RssSampler | None = None
    try:
        await worker.start()
        sampler = RssSampler([worker.pid])
        await producer.start()
        await worker.wait_for(lambda: worker.ready_at, 120, "worker READY")
        await producer.wait_for(lambda: producer.ready_at, 120, "producer READY")
        log(f"[{system.name}] latency: warming up")
        for no in range(1_000_000, 1_000_003):  # warm-up: connections, prepared statements, JIT
            await producer.send(str(no))
            await worker.wait_for(lambda no=no: worker.events.get(("RUN", no)), 60, f"warm-up job {no}")
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)  # let the worker go idle
        samples: list[float] = []
        for no in range(pickups):
            await producer.send(str(no))
            ran = await worker.wait_for(lambda no=no: worker.events.get(("RUN", no)), 30, f"job {no} to start")
            sent = await producer.wait_for(lambda no=no: producer.events.get(("SENT", no)), 30, f"job {no} sent")
            samples.append((ran - sent) * 1000)
            if (no + 1) % 10 == 0:
                log(f"[{system.name}] latency: {no + 1}/{pickups}, median so far {statistics.median(samples):.1f} ms")
            await asyncio.sleep(0.2)  # idle again before the next one
        rss = await sampler.stop()
        sampler = None
        res = {"pickups": pickups, "median_ms": statistics.median(samples), "p90_ms": _pct(samples, 0.9),
               "min_ms": min(samples), "max_ms": max(samples), "worker_rss_mb": rss}
        log(f"[{system.name}] latency: median {res['median_ms']:.1f} ms, p90 {res['p90_ms']:.1f} ms")
        return res
    finally:
        if sampler is not None:
            await sampler.stop()
        await producer.stop()
        await worker.stop()
        await server.drop_db(db)


# A system whose first round of a workload took longer than this runs that workload once.
SLOW_ROUND_S = 20.0


def _plan(args: argparse.Namespace) -> list[tuple[str, Any, dict[str, Any], int]]:
    """(workload, function, arguments, rounds): throughput workloads in rounds, pickup once
    (it is already a median of many samples)."""
    plan = [
        ("enqueue", w_enqueue, {"jobs": args.jobs}, args.rounds),
        ("drain1", w_drain, {"jobs": args.jobs, "workers": 1}, args.rounds),
        ("drain2", w_drain, {"jobs": args.jobs, "workers": 2}, args.rounds),
        ("latency", w_latency, {"pickups": args.pickups}, 1),
    ]
    return [step for step in plan if step[0] in args.workloads]


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, carrying every round's figure."""
    ordered = sorted(rounds, key=lambda r: r["jobs_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_jobs_per_s": [r["jobs_per_s"] for r in rounds]}


async def run_workloads(server: Server, systems: dict[str, System], args: argparse.Namespace
                        ) -> dict[str, dict[str, Any]]:
    """Workload-major: each workload for every system, round after round, so that the machine's
    drift over a long run (its speed moves by ±10-20% between minutes) falls on all systems alike."""
    out: dict[str, dict[str, Any]] = {name: {"status": "ok", "workloads": {}} for name in systems}
    for workload, fn, kw, rounds in _plan(args):
        done: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        for round_no in range(rounds):
            for name, system in systems.items():
                res = out[name]
                if res["status"] == "pending" or "error" in res["workloads"].get(workload, {}):
                    continue
                if round_no and done[name] and done[name][0].get("seconds", 0) > SLOW_ROUND_S:
                    continue
                if rounds > 1:
                    log(f"[{name}] {workload}: round {round_no + 1} of {rounds}")
                try:
                    done[name].append(await fn(server, system, **kw))
                except Pending as exc:
                    log(f"[{name}] pending: adapter not implemented ({exc})")
                    out[name] = {"status": "pending", "reason": str(exc), "workloads": {}}
                except (AdapterError, OSError, asyncpg.PostgresError) as exc:
                    log(f"[{name}] {workload} FAILED: {exc}")
                    res["workloads"][workload] = {"error": str(exc)}
        for name, runs in done.items():
            if runs and out[name]["status"] != "pending" and "error" not in out[name]["workloads"].get(workload, {}):
                out[name]["workloads"][workload] = _median_round(runs) if rounds > 1 else runs[0]
    for name, res in out.items():
        errors = sum("error" in w for w in res["workloads"].values())
        if errors:
            res["status"] = "failed" if errors == len(res["workloads"]) else "partial"
        res["version"] = systems[name].info.get("version")
        res["config"] = systems[name].info.get("config", {})
    return out


# --------------------------------------------------------------------------- Shoal-only workloads
# (d)-(g) measure Shoal itself. They run in this process (the project venv) against the same
# server, each in a fresh database, after every system's (a)-(c).

QUEUE = "bench"


def _shoal_system() -> System:
    sys_or_reason = make_system("shoal", setup_peers.PeerEnv())
    assert isinstance(sys_or_reason, System)
    return sys_or_reason


async def _shoal_db(server: Server, name: str, queue: str = QUEUE, **queue_opts: Any) -> str:
    from shoal.migrate import migrate
    from shoal.queues import declare_queue

    url = await server.fresh_db(name)
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await declare_queue(conn, queue, **queue_opts)
    finally:
        await conn.close()
    return url


async def _timed_ms(conn: asyncpg.Connection, sql: str, *args: Any, runs: int = 20) -> dict[str, float]:
    stmt = await conn.prepare(sql)
    for _ in range(3):  # warm-up: plan cache, buffer cache
        await stmt.fetchval(*args)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await stmt.fetchval(*args)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(samples), "p90_ms": _pct(samples, 0.9), "max_ms": max(samples)}


async def w_ready_count_cost(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """(d) `shoal.ready_count` / `shoal.running_count` on a queue of 100k, 1M (and 10M) pending jobs.

    Rows are inserted with one INSERT ... SELECT generate_series per million, then VACUUM
    ANALYZE; each query is prepared once and timed client-side (round trip included), the
    median of 20 runs after 3 warm-ups. cap 41 is what the autoscaler sends for
    maxReplicas 10 x targetPerReplica 4 (+1); cap 10,000 is the functions' default."""
    sizes = [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    db = "bench_shoal_ready_count"
    url = await _shoal_db(server, db)
    conn = await asyncpg.connect(url)
    out: dict[str, Any] = {"status": "ok", "sizes": {}, "runs": 20}
    try:
        have = 0
        for size in sizes:
            t0 = time.perf_counter()
            while have < size:
                n = min(1_000_000, size - have)
                await conn.execute("INSERT INTO shoal.jobs (queue, task, max_attempts) "
                                   "SELECT $1, 'shoal.noop', 5 FROM generate_series(1, $2::integer)", QUEUE, n)
                have += n
            await conn.execute("VACUUM ANALYZE shoal.jobs")
            log(f"[shoal] (d) ready-count: {size:,} pending jobs in place ({time.perf_counter() - t0:.0f}s)")
            res = {
                "ready_count_cap41": await _timed_ms(conn, "SELECT shoal.ready_count($1, 41)", QUEUE),
                "ready_count_cap10000": await _timed_ms(conn, "SELECT shoal.ready_count($1, 10000)", QUEUE),
                "running_count_cap41": await _timed_ms(conn, "SELECT shoal.running_count($1, 41)", QUEUE),
                "ready_and_running_cap41": await _timed_ms(
                    conn, "SELECT shoal.ready_count($1, 41) + shoal.running_count($1, 41)", QUEUE),
            }
            out["sizes"][str(size)] = res
            log(f"[shoal] (d) ready-count at {size:,}: " + ", ".join(
                f"{k} {v['median_ms']:.2f} ms" for k, v in res.items()))
    finally:
        await conn.close()
        await server.drop_db(db)
    return out


class _RecordingTarget:
    """A ScaleTarget that only remembers what it was asked: the decision path is what (e) times."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.raised = asyncio.Event()
        self.raised_at: float | None = None
        self.raised_to = 0
        self.baseline = replicas
        self.calls = 0

    async def current_replicas(self) -> int:
        return self.replicas

    async def set_replicas(self, desired: int, decision: Any) -> None:
        self.calls += 1
        if desired > self.baseline and self.raised_at is None:
            self.raised_at = time.perf_counter()
            self.raised_to = desired
            self.raised.set()
        self.replicas = desired


async def _reaction(url: str, *, baseline: int, wakeups: bool, bursts: int, burst_size: int) -> dict[str, Any]:
    import random

    from shoal.client import NewJob, enqueue_many
    from shoal.scaler.decision import Policy
    from shoal.scaler.loop import Autoscaler, EnqueueWakeups, create_measure_pool

    policy = Policy(min_replicas=baseline, max_replicas=10, concurrency=4, scale_down_delay=0.0,
                    scale_to_zero=baseline == 0)
    target = _RecordingTarget(baseline)
    pool = await create_measure_pool(url)
    wake = EnqueueWakeups(url) if wakeups else None
    scaler = Autoscaler(queue=QUEUE, pool=pool, target=target, policy=lambda: policy, interval=1.0, wakeups=wake)
    stop = asyncio.Event()
    task = asyncio.create_task(scaler.run(stop))
    conn = await asyncpg.connect(url)
    samples: list[float] = []
    rng = random.Random(7)
    try:
        await asyncio.sleep(1.5)  # connected, idle, a few ticks done
        for i in range(bursts):
            # Land at a random phase of the 1 s tick, as real bursts do.
            await asyncio.sleep(0.3 + rng.random())
            target.raised.clear()
            target.raised_at = None
            t0 = time.perf_counter()
            await enqueue_many(conn, [NewJob(QUEUE, "shoal.noop", {"n": n}) for n in range(burst_size)])
            await asyncio.wait_for(target.raised.wait(), 10)
            assert target.raised_at is not None
            samples.append((target.raised_at - t0) * 1000)
            await conn.execute("DELETE FROM shoal.jobs WHERE queue = $1", QUEUE)
            deadline = time.monotonic() + 10
            while True:  # scale back down (delay 0) before the next burst
                if target.replicas == baseline or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            log(f"[shoal] (e) burst {i + 1}/{bursts} ({'LISTEN' if wakeups else 'poll only'}, from {baseline}): "
                f"{samples[-1]:.1f} ms -> {target.raised_to} replicas")
    finally:
        stop.set()
        await task
        await conn.close()
        if wake:
            await wake.close()
        await pool.close()
    return {"bursts": bursts, "burst_jobs": burst_size, "from_replicas": baseline, "listen_wakeup": wakeups,
            "interval_s": 1.0, "median_ms": statistics.median(samples), "max_ms": max(samples),
            "min_ms": min(samples), "samples_ms": [round(s, 1) for s in samples]}


async def w_autoscale_reaction(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """(e) A burst of jobs lands on an idle queue -> the Autoscaler calls set_replicas higher.

    Time runs from just before `enqueue_many` (its commit sends NOTIFY shoal_jobs) to the
    target's set_replicas call. Local backend's control loop (`shoal.scaler.loop.Autoscaler`,
    tick every 1 s, policy max 10 replicas x 4 jobs) with a recording target instead of
    spawning processes. Three variants: from 1 replica and from 0 (scale to zero), with the
    LISTEN wake-up; from 1 with polling only (wakeups=None), what NOTIFY buys."""
    bursts = 3 if args.quick else 5
    db = "bench_shoal_autoscale"
    url = await _shoal_db(server, db)
    out: dict[str, Any] = {"status": "ok"}
    try:
        out["listen_from_1"] = await _reaction(url, baseline=1, wakeups=True, bursts=bursts, burst_size=500)
        out["listen_from_0"] = await _reaction(url, baseline=0, wakeups=True, bursts=bursts, burst_size=500)
        out["poll_from_1"] = await _reaction(url, baseline=1, wakeups=False, bursts=bursts, burst_size=500)
        log("[shoal] (e) burst -> scale-up decision, median: " + ", ".join(
            f"{k} {v['median_ms']:.0f} ms" for k, v in out.items() if isinstance(v, dict)))
    finally:
        await server.drop_db(db)
    return out


def _rss_mb(pid: int) -> float:
    p = psutil.Process(pid)
    return (p.memory_info().rss + sum(ch.memory_info().rss for ch in p.children(recursive=True))) / 2**20


async def _worker_memory(server: Server, jobs: int) -> dict[str, Any]:
    system = _shoal_system()
    db, url = await setup_db(server, system, "memory")
    worker = Proc(system, system.argv("worker", url), "shoal-memory-worker")
    sampler: RssSampler | None = None
    conn = await asyncpg.connect(url)
    try:
        await worker.start()
        await worker.wait_for(lambda: worker.ready_at, 120, "READY")
        await asyncio.sleep(3)
        idle = _rss_mb(worker.pid)
        sampler = RssSampler([worker.pid])
        await run_once(system, system.argv("enqueue", url, "--jobs", str(jobs)), 900, "shoal-memory-enqueue")
        deadline = time.monotonic() + 600
        while True:
            if not int(await conn.fetchval(system.info["remaining_sql"])) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        peak = await sampler.stop()
        sampler = None
        await asyncio.sleep(2)
        after = _rss_mb(worker.pid)
        log(f"[shoal] (f) worker RSS: idle {idle:.1f} MB, peak while draining {jobs:,} {peak:.1f} MB, "
            f"after {after:.1f} MB")
        return {"jobs": jobs, "idle_mb": idle, "peak_mb": peak, "after_drain_mb": after,
                "concurrency": system.info.get("config", {}).get("worker.concurrency")}
    finally:
        if sampler is not None:
            await sampler.stop()
        await worker.stop()
        await conn.close()
        await server.drop_db(db)


class _EmulatedCluster:
    """shoal.testing's Kubernetes API emulator, served from a thread of this process, with the CRDs."""

    def __init__(self) -> None:
        from shoal.testing.k8s.cluster import EmulatorThread

        self.emulated = EmulatorThread()

    def start(self) -> str:
        import yaml

        api = self.emulated.start()
        emulator = self.emulated.emulator
        assert emulator is not None
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            self.emulated.call(lambda crd=crd: emulator.register_crd(crd))
        return api

    def stop(self) -> None:
        self.emulated.stop()


async def _operator_memory(server: Server) -> dict[str, Any]:
    import aiohttp
    import yaml

    probe = await asyncio.create_subprocess_exec(sys.executable, "-m", "shoal.cli", "operator", "--help",
                                                 cwd=PEERS_DIR, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.PIPE)
    _, err = await probe.communicate()
    if probe.returncode != 0:
        return {"status": "pending", "reason": "pending: operator (`shoal operator` is not available: "
                f"{(err.decode(errors='replace').strip().splitlines() or ['?'])[-1][:200]})"}
    db = "bench_shoal_operator"
    url = await _shoal_db(server, db)
    cluster = _EmulatedCluster()
    proc: asyncio.subprocess.Process | None = None
    log_path = LOGS / "shoal-operator.log"
    try:
        api = cluster.start()
        kubeconfig = STATE / "kubeconfig-bench.yaml"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": api}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                          "namespace": "bench"}}],
        }))
        LOGS.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shoal.cli", "operator", "--standalone", "--health-port", "0",
                "--metrics-port", "0", cwd=PEERS_DIR, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)}, start_new_session=True)
        peak = 0.0
        async def sample(seconds: float) -> float:
            nonlocal peak
            end = time.monotonic() + seconds
            last = 0.0
            while time.monotonic() < end:
                if proc.returncode is not None:
                    tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
                    raise AdapterError(f"operator exited ({proc.returncode}): {tail[-400:]}")
                last = _rss_mb(proc.pid)
                peak = max(peak, last)
                await asyncio.sleep(0.1)
            return last
        idle = await sample(8)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer emulator-token"}) as http:
            for path, body in [
                ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
                ("/api/v1/namespaces/bench/secrets", {"apiVersion": "v1", "kind": "Secret",
                                                      "metadata": {"name": "db"}, "stringData": {"url": url}}),
                ("/apis/shoal.dev/v1alpha1/namespaces/bench/queues", {
                    "apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": QUEUE},
                    "spec": {"databaseSecretRef": {"name": "db", "key": "url"},
                             "worker": {"image": "shoal-bench:1"}}}),
            ]:
                async with http.post(api + path, json=body) as resp:
                    if resp.status >= 300:
                        raise AdapterError(f"emulator refused POST {path}: {resp.status} {await resp.text()}")
            managed = await sample(12)
            async with http.get(f"{api}/apis/apps/v1/namespaces/bench/deployments/{QUEUE}-workers") as resp:
                deployment = (await resp.json()) if resp.status == 200 else None
        log(f"[shoal] (f) operator RSS: idle {idle:.1f} MB, with one Queue {managed:.1f} MB, peak {peak:.1f} MB "
            f"(Deployment reconciled: {deployment is not None})")
        return {"status": "ok", "idle_mb": idle, "one_queue_mb": managed, "peak_mb": peak,
                "queue_reconciled": deployment is not None}
    finally:
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        cluster.stop()
        await server.drop_db(db)


async def w_operator_memory(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """(f) Resident memory (psutil RSS, process + children) of a Shoal worker process (the
    benchmark adapter's worker, concurrency as in (b)) idle and around draining N jobs, and of
    `shoal operator --standalone` against the in-process Kubernetes emulator, idle and
    managing one Queue (its autoscaler loop and database pool included)."""
    out: dict[str, Any] = {"status": "ok"}
    try:
        out["worker"] = await _worker_memory(server, args.jobs)
    except (AdapterError, OSError, asyncpg.PostgresError) as exc:
        log(f"[shoal] (f) worker memory FAILED: {exc}")
        out["worker"] = {"error": str(exc)}
    try:
        out["operator"] = await _operator_memory(server)
    except Exception as exc:  # the operator is young; a failure here must not sink the run
        log(f"[shoal] (f) operator memory FAILED: {exc!r}")
        out["operator"] = {"status": "failed", "error": repr(exc)[:500]}
    if out["operator"].get("status") == "pending":
        log(f"[shoal] (f) operator: {out['operator']['reason']}")
    return out


def _max_in_window(times: list[float], window: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def w_mixed_retries_rate_limit(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """(g) A queue limited to 200 starts/s, N jobs of which 20% fail their first attempt
    (retried with Shoal's default backoff), two `shoal worker` CLI processes (concurrency 50).
    Every handler start is timestamped by the handler itself (START lines); reported: the
    achieved start rate, the most starts in any 1 s sliding window (must be <= 200),
    retries, and that every job ends succeeded."""
    from shoal.client import NewJob, enqueue_many
    from shoal.ratelimit import RateLimit

    limit, jobs, workers = 200, (1500 if args.quick else 6000), 2
    db = "bench_shoal_mixed"
    url = await _shoal_db(server, db, queue="mixed", rate_limit=RateLimit(limit, 1),
                          keep_succeeded_seconds=3600)
    conn = await asyncpg.connect(url)
    # Instrumentation of this throwaway database only: keep a copy of Shoal's sliding-window
    # log (one row per claim: database time, jobs started), which Shoal prunes as it ages out.
    await conn.execute("""
        CREATE TABLE public.bench_claims (at timestamptz NOT NULL, n integer NOT NULL);
        CREATE FUNCTION public.bench_copy_claim() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.bench_claims VALUES (NEW.started_at, NEW.n); RETURN NEW; END $$;
        CREATE TRIGGER bench_copy_claim AFTER INSERT ON shoal.rate_log
            FOR EACH ROW EXECUTE FUNCTION public.bench_copy_claim();
    """)
    procs: list[asyncio.subprocess.Process] = []
    outs: list[Path] = [LOGS / f"shoal-mixed-worker{i}.out" for i in range(workers)]
    try:
        for start in range(0, jobs, 5000):
            await enqueue_many(conn, [NewJob("mixed", "bench.flaky", {"n": n})
                                      for n in range(start, min(jobs, start + 5000))])
        env = {**os.environ, "PYTHONPATH": str(PEERS_DIR), "SHOAL_DATABASE_URL": url}
        LOGS.mkdir(parents=True, exist_ok=True)
        for i in range(workers):
            with outs[i].open("wb") as o, (LOGS / f"shoal-mixed-worker{i}.log").open("wb") as e:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "shoal.cli", "--log-format", "json", "worker", "--queue", "mixed",
                    "--concurrency", "50", "--tasks", "shoal_tasks",
                    cwd=PEERS_DIR, env=env, stdout=o, stderr=e, start_new_session=True))
        t0 = time.monotonic()
        limit_s = jobs * 1.2 / limit * 3 + 60
        while True:
            left = await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'mixed' "
                                       "AND state IN ('pending', 'running')")
            if left == 0:
                break
            if time.monotonic() - t0 > limit_s:
                raise AdapterError(f"mixed run: {left} jobs unfinished after {limit_s:.0f}s")
            dead = [p for p in procs if p.returncode is not None]
            if dead:
                raise AdapterError(f"mixed worker exited ({dead[0].returncode}); see {LOGS}/shoal-mixed-worker*.log")
            await asyncio.sleep(0.5)
        states = {r["state"]: r["n"] for r in await conn.fetch(
            "SELECT state::text AS state, count(*) AS n FROM shoal.jobs WHERE queue = 'mixed' GROUP BY 1")}
        attempts_total = await conn.fetchval("SELECT sum(attempts) FROM shoal.jobs WHERE queue = 'mixed'")
        claims = [(float(r["t"]), int(r["n"])) for r in await conn.fetch(
            "SELECT extract(epoch FROM at)::float8 AS t, n FROM public.bench_claims ORDER BY at")]
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
                await p.wait()
        await conn.close()
        await server.drop_db(db)
    # Database side (the guarantee): starts in any window (t - 1 s, t] never exceed the limit.
    db_max, lo, in_window = 0, 0, 0
    for t, n in claims:
        in_window += n
        while claims[lo][0] <= t - 1.0:
            in_window -= claims[lo][1]
            lo += 1
        db_max = max(db_max, in_window)
    whole = int(claims[-1][0] - claims[0][0]) if claims else 0
    db_rate = (sum(n for t, n in claims if t < claims[0][0] + whole) / whole) if whole else 0.0
    starts: list[tuple[float, int, int]] = []
    for path in outs:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "START":
                starts.append((float(parts[3]), int(parts[1]), int(parts[2])))
    starts.sort()
    times = [s[0] for s in starts]
    span = times[-1] - times[0]
    retries = sum(1 for s in starts if s[2] > 1)
    handler_max = _max_in_window(times, 1.0)
    per_worker = [sum(1 for line in p.read_text().splitlines() if line.startswith("START")) for p in outs]
    res = {
        "status": "ok", "jobs": jobs, "workers": workers, "worker_concurrency": 50, "rate_limit_per_s": limit,
        "failing_first_attempt": "20% (n % 5 == 0)", "starts": len(starts), "retries": retries,
        "expected_retries": len(range(0, jobs, 5)), "starts_per_worker": per_worker,
        "seconds": span, "claims": len(claims), "claimed_jobs": sum(n for _, n in claims),
        "whole_seconds": whole, "starts_per_s": db_rate,
        "max_starts_in_1s_window": db_max, "limit_held": db_max <= limit,
        "handler_max_starts_in_1s_window": handler_max,
        "final_states": states, "attempts_recorded": int(attempts_total or 0),
    }
    log(f"[shoal] (g) mixed: {len(starts):,} starts ({retries:,} retries) in {span:.1f}s; claims: "
        f"{db_rate:.0f} starts/s over the first {whole} whole seconds (limit {limit}/s), max in any 1 s window "
        f"{db_max} (database claim time), {handler_max} (handler clock); final states {states}")
    return res


SHOAL_ONLY_FNS = {"ready_count_cost": w_ready_count_cost, "autoscale_reaction": w_autoscale_reaction,
                  "operator_memory": w_operator_memory, "mixed_retries_rate_limit": w_mixed_retries_rate_limit}



# --------------------------------------------------------------------------- report


def machine_info(server_version: str, peers: setup_peers.PeerEnv, fast_unsafe: bool) -> dict[str, Any]:
    from shoal.testing.machine import cpu_model

    cpu = cpu_model()
    node_version = None
    if peers.node:
        node_version = subprocess.run([peers.node, "--version"], capture_output=True, text=True,
                                      check=False).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "node": node_version,
        "postgresql": server_version,
        "postgresql_settings": "fsync=off, synchronous_commit=off, full_page_writes=off (fast_unsafe)"
        if fast_unsafe else "durable defaults (fsync on, synchronous_commit on), max_connections=200",
        "asyncpg": asyncpg.__version__,
        "peers": {**peers.python_versions, **peers.node_versions},
    }


def _fmt_rate(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _metric(res: dict[str, Any], workload: str, key: str) -> float | None:
    w = res.get("workloads", {}).get(workload, {})
    v = w.get(key)
    return float(v) if isinstance(v, int | float) else None


def _rss(res: dict[str, Any]) -> float | None:
    vals = [w["worker_rss_mb"] for w in res.get("workloads", {}).values() if isinstance(w.get("worker_rss_mb"), float)]
    return max(vals) if vals else None


COLUMNS = [  # header, workload, key, formatter, higher_is_better
    ("enqueue jobs/s", "enqueue", "jobs_per_s", _fmt_rate, True),
    ("drain ×1 jobs/s", "drain1", "jobs_per_s", _fmt_rate, True),
    ("drain ×2 jobs/s", "drain2", "jobs_per_s", _fmt_rate, True),
    ("pickup p50 ms", "latency", "median_ms", _fmt_ms, False),
    ("pickup p90 ms", "latency", "p90_ms", _fmt_ms, False),
]


def render_table(results: dict[str, Any]) -> str:
    shoal = results.get("shoal", {})
    header = ["system", "status", *[c[0] for c in COLUMNS], "worker peak RSS MB"]
    rows = [header, ["---"] * len(header)]
    for name, res in results.items():
        cells = [name, res.get("status", "?")]
        for _, wl, key, fmt, higher in COLUMNS:
            v = _metric(res, wl, key)
            w = res.get("workloads", {}).get(wl, {})
            cell = "failed" if "error" in w else fmt(v)
            if w.get("timeout"):
                cell += " (timeout)"
            s = _metric(shoal, wl, key)
            if name != "shoal" and v and s:
                ratio = s / v if higher else v / s
                cell += f" ({ratio:.2f}×)"
            cells.append(cell)
        rss, srss = _rss(res), _rss(shoal)
        cells.append("—" if rss is None else f"{rss:.0f}" + (f" ({rss / srss:.2f}×)" if name != "shoal" and srss else ""))
        rows.append(cells)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


RATIO_NOTE = ("(n×) is Shoal's advantage over that system, from this same run: Shoal ÷ peer for "
              "throughput, peer ÷ Shoal for latency and memory, so above 1 means Shoal is ahead. "
              "It is blank when Shoal did not run.")


def render_generated(report: dict[str, Any]) -> str:
    m, a = report["machine"], report["args"]
    lines = [
        f"Command: `{a['command']}` — {a['jobs']:,} jobs per throughput workload, {a.get('rounds', 1)} round(s), "
        f"{a['pickups']} pickups; "
        f"run finished {report['finished_at']} in {report['duration_s'] / 60:.1f} min.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['os']}. "
        f"PostgreSQL {m['postgresql']} (embedded, pgserver binaries, same box; {m['postgresql_settings']}). "
        f"Python {m['python']}, asyncpg {m['asyncpg']}, Node {m['node'] or 'absent'}.",
        "",
        render_table(report["systems"]),
        "",
        RATIO_NOTE,
        "",
        render_rounds(report["systems"], a.get("rounds", 1)),
        "",
        "| system | version | configuration |",
        "| --- | --- | --- |",
    ]
    for name, res in report["systems"].items():
        cfg = ", ".join(f"`{k}={v}`" for k, v in (res.get("config") or {}).items())
        why = res.get("reason", "")
        lines.append(f"| {name} | {res.get('version') or '—'} | {cfg or why or '—'} |")
    errors = [(n, wl, w["error"]) for n, r in report["systems"].items()
              for wl, w in r.get("workloads", {}).items() if "error" in w]
    if errors:
        lines += ["", "Failures in this run:", ""]
        lines += [f"- {n} / {wl}: {e}" for n, wl, e in errors]
    if report["shoal_only"]:
        lines += ["", render_shoal_only(report["shoal_only"]), "", render_targets(report)]
    return "\n".join(lines)


def render_rounds(results: dict[str, Any], rounds: int) -> str:
    """Every round's throughput, so the spread behind each median is on the page."""
    head = (f"Throughput workloads ran in {rounds} round(s), workload-major (each workload for every system, "
            f"round after round; a system whose round took over {SLOW_ROUND_S:.0f} s ran it once); the table "
            "above shows each system's median round. Every round, jobs/s:")
    lines = [head, "", "| system | enqueue | drain ×1 | drain ×2 |", "| --- | --- | --- | --- |"]
    for name, res in results.items():
        cells = []
        for wl in ("enqueue", "drain1", "drain2"):
            w = res.get("workloads", {}).get(wl, {})
            runs = w.get("rounds_jobs_per_s") or ([w["jobs_per_s"]] if "jobs_per_s" in w else [])
            cells.append(" / ".join(f"{r:,.0f}" for r in runs) or "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_shoal_only(so: dict[str, Any]) -> str:
    lines: list[str] = []
    d = so.get("ready_count_cost", {})
    if d.get("sizes"):
        lines += ["**(d) Ready-count query cost** (client round trip, median of 20 / p90, ms; all jobs pending):", "",
                  "| pending jobs | ready_count cap 41 | ready_count cap 10,000 | running_count cap 41 | "
                  "ready + running cap 41 |", "| --- | --- | --- | --- | --- |"]
        for size, r in d["sizes"].items():
            cells = [f"{r[k]['median_ms']:.2f} / {r[k]['p90_ms']:.2f}" for k in
                     ("ready_count_cap41", "ready_count_cap10000", "running_count_cap41", "ready_and_running_cap41")]
            lines.append(f"| {int(size):,} | " + " | ".join(cells) + " |")
        lines.append("")
    elif d:
        lines += [f"**(d) Ready-count query cost**: {d.get('status')} {d.get('error', '')}", ""]
    e = so.get("autoscale_reaction", {})
    if "listen_from_1" in e:
        lines += ["**(e) Burst → scale-up decision** (500 jobs land on an idle queue; time from the "
                  "`enqueue_many` call to `set_replicas(higher)`; loop interval 1 s):", "",
                  "| variant | median ms | min ms | max ms | bursts |", "| --- | --- | --- | --- | --- |"]
        names = {"listen_from_1": "LISTEN wake-up, from 1 replica", "listen_from_0": "LISTEN wake-up, from 0 (scale to zero)",
                 "poll_from_1": "no wake-up (wakeups=None), from 1 replica"}
        for k, label in names.items():
            r = e[k]
            lines.append(f"| {label} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} | {r['bursts']} |")
        lines.append("")
    elif e:
        lines += [f"**(e) Burst → scale-up decision**: {e.get('status')} {e.get('error', '')}", ""]
    f = so.get("operator_memory", {})
    if f:
        w, op = f.get("worker", {}), f.get("operator", {})
        parts = []
        if "idle_mb" in w:
            parts.append(f"worker (concurrency {w.get('concurrency')}) idle {w['idle_mb']:.1f} MB, peak while draining "
                         f"{w['jobs']:,} jobs {w['peak_mb']:.1f} MB, after {w['after_drain_mb']:.1f} MB")
        else:
            parts.append(f"worker: {w.get('error', '?')}")
        if op.get("status") == "ok":
            parts.append(f"`shoal operator --standalone` (against the in-process Kubernetes emulator) idle "
                         f"{op['idle_mb']:.1f} MB, managing one Queue {op['one_queue_mb']:.1f} MB, peak {op['peak_mb']:.1f} MB")
        else:
            parts.append(f"operator: {op.get('reason') or op.get('error') or op.get('status')}")
        lines += ["**(f) Resident memory** (psutil RSS): " + "; ".join(parts) + ".", ""]
    g = so.get("mixed_retries_rate_limit", {})
    if g.get("status") == "ok":
        lines += [f"**(g) Mixed run**: {g['jobs']:,} jobs on a queue limited to {g['rate_limit_per_s']}/s, 20% failing "
                  f"their first attempt, {g['workers']} `shoal worker` processes (concurrency {g['worker_concurrency']}): "
                  f"{g['starts']:,} handler starts ({g['retries']:,} retries, {g['expected_retries']:,} expected) in "
                  f"{g['seconds']:.1f} s; achieved **{g['starts_per_s']:.0f} starts/s** over the first "
                  f"{g['whole_seconds']} whole seconds ({g['starts_per_s'] / g['rate_limit_per_s']:.2f}× the limit); "
                  f"most starts in any 1 s sliding window, by the claims' database time: "
                  f"**{g['max_starts_in_1s_window']}** (limit {g['rate_limit_per_s']}: "
                  f"{'held' if g['limit_held'] else 'EXCEEDED'}); by the handlers' own clock: "
                  f"{g['handler_max_starts_in_1s_window']} (a handler starts a few ms to tens of ms after its claim, "
                  f"and not by the same delay for every batch); starts per worker {g['starts_per_worker']}; "
                  f"final states {g['final_states']}.", ""]
    elif g:
        lines += [f"**(g) Mixed run**: {g.get('status')} {g.get('error', '')}", ""]
    return "\n".join(lines).rstrip()


def render_targets(report: dict[str, Any]) -> str:
    """The issue's targets (#7), judged on this run's figures."""
    systems, so = report["systems"], report["shoal_only"]
    shoal = systems.get("shoal", {})

    def m(name: str, wl: str, key: str) -> float | None:
        return _metric(systems.get(name, {}), wl, key)

    rows: list[tuple[str, str, str]] = []

    def ratio_row(label: str, num: float | None, den: float | None, need: float, higher: bool = True) -> None:
        if num is None or den is None:
            rows.append((label, "—", "not measured"))
            return
        r = num / den
        ok = r >= need if higher else r <= need
        rows.append((label, f"{r:.2f}×", "met" if ok else "**not met**"))

    for wl, label in (("drain1", "×1"), ("drain2", "×2")):
        ratio_row(f"drain {label} ≥ 2× Graphile Worker", m("shoal", wl, "jobs_per_s"), m("graphile-worker", wl, "jobs_per_s"), 2.0)
        ratio_row(f"drain {label} ≥ 0.85× bare loop", m("shoal", wl, "jobs_per_s"), m("bare", wl, "jobs_per_s"), 0.85)
    ratio_row("enqueue ≥ 3× Graphile Worker", m("shoal", "enqueue", "jobs_per_s"),
              m("graphile-worker", "enqueue", "jobs_per_s"), 3.0)
    ratio_row("pickup median ≤ Graphile Worker's (Shoal ÷ Graphile ≤ 1)", m("shoal", "latency", "median_ms"),
              m("graphile-worker", "latency", "median_ms"), 1.0, higher=False)
    d = so.get("ready_count_cost", {}).get("sizes", {})
    if d:
        worst = max(r[k]["median_ms"] for r in d.values() for k in ("ready_count_cap41", "ready_and_running_cap41"))
        sizes = ", ".join(f"{int(s):,}" for s in d)
        rows.append((f"ready-count ≤ 5 ms at {sizes} jobs (autoscaler cap 41, worst median)", f"{worst:.2f} ms",
                     "met" if worst <= 5 else "**not met**"))
        if "10000000" not in d:
            rows.append(("ready-count at 10M jobs", "—", "not measured in this run (--quick)"))
    e = so.get("autoscale_reaction", {})
    if "listen_from_1" in e:
        worst = max(e[k]["max_ms"] for k in ("listen_from_1", "listen_from_0"))
        rows.append(("burst → scale-up decision ≤ 2 s (worst burst, LISTEN on)", f"{worst / 1000:.3f} s",
                     "met" if worst <= 2000 else "**not met**"))
    f = so.get("operator_memory", {})
    w = f.get("worker", {})
    if "peak_mb" in w:
        rss = max(w["peak_mb"], _rss(shoal) or 0)
        rows.append(("worker RSS ≤ 80 MB (peak, any workload)", f"{rss:.0f} MB", "met" if rss <= 80 else "**not met**"))
    op = f.get("operator", {})
    if op.get("status") == "ok":
        rows.append(("operator RSS ≤ 120 MB (peak)", f"{op['peak_mb']:.0f} MB",
                     "met" if op["peak_mb"] <= 120 else "**not met**"))
    elif op:
        rows.append(("operator RSS ≤ 120 MB", "—", op.get("reason") or "failed to measure"))
    g = so.get("mixed_retries_rate_limit", {})
    if g.get("status") == "ok":
        rows.append(("rate limit holds under load (max claimed starts in any 1 s ≤ limit)",
                     f"{g['max_starts_in_1s_window']} / {g['rate_limit_per_s']} (handler clock: "
                     f"{g['handler_max_starts_in_1s_window']})", "met" if g["limit_held"] else "**not met**"))
    out = ["**Against the targets of issue #7** (this run):", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


BEGIN, END = "<!-- BEGIN GENERATED by bench/run.py -->", "<!-- END GENERATED -->"


def write_docs(report: dict[str, Any]) -> None:
    docs_section.write_between(BEGIN, END, render_generated(report), "## Latest run", path=DOCS)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=None, help="jobs per throughput workload (default 50,000)")
    p.add_argument("--pickups", type=int, default=None, help="pickups measured for latency (default 50)")
    p.add_argument("--quick", action="store_true", help="5,000 jobs, 10 pickups, one round, for development")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of each throughput workload per system; the median round is reported (default 3)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    p.add_argument("--shoal-only", default=",".join(SHOAL_ONLY),
                   help=f"Shoal-only workloads (d)-(g) to run when shoal is selected: subset of "
                        f"{','.join(SHOAL_ONLY)}, or 'none'")
    p.add_argument("--fast-unsafe", action="store_true",
                   help="run PostgreSQL with fsync off (faster, not comparable with published figures)")
    p.add_argument("--write-docs", action="store_true",
                   help="update docs/benchmarks.md even for --quick/--only runs")
    p.add_argument("--no-docs", action="store_true", help="never touch docs/benchmarks.md")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json",
                   help="results file (default bench/results/latest.json, the run shown in the docs)")
    args = p.parse_args()
    args.jobs = args.jobs or (5000 if args.quick else 50_000)
    args.pickups = args.pickups or (10 if args.quick else 50)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.systems = ALL_SYSTEMS if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.systems) - set(ALL_SYSTEMS)
    if unknown:
        p.error(f"unknown system(s): {', '.join(sorted(unknown))}; choose from {', '.join(ALL_SYSTEMS)}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(args.workloads) - set(WORKLOADS):
        p.error(f"unknown workload(s); choose from {', '.join(WORKLOADS)}")
    args.shoal_only = [] if args.shoal_only == "none" else [w.strip() for w in args.shoal_only.split(",") if w.strip()]
    if set(args.shoal_only) - set(SHOAL_ONLY):
        p.error(f"unknown Shoal-only workload(s); choose from {', '.join(SHOAL_ONLY)} or 'none'")
    args.command = "python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    out = args.output.resolve()
    args.output_shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return args


async def amain(args: argparse.Namespace) -> int:
    log("setting up peers (bench/.peers/)")
    kinds = {PEER_LANG[name] for name in args.systems}
    peers = setup_peers.ensure_peers(lambda m: log(f"[setup] {m}"), python="peer-py" in kinds, node="node" in kinds)
    for name, why in peers.unavailable.items():
        log(f"[setup] {name} unavailable: {why}")
    log(f"starting embedded PostgreSQL ({'fast_unsafe: fsync off' if args.fast_unsafe else 'durable: fsync on'})")
    server = Server(args.fast_unsafe)
    results: dict[str, Any] = {}
    shoal_only: dict[str, Any] = {}
    try:
        server_version = str(await server.admin("SHOW server_version"))
        log(f"PostgreSQL {server_version} on {server.base_url}")
        systems: dict[str, System] = {}
        for name in args.systems:
            sys_or_reason = make_system(name, peers)
            if isinstance(sys_or_reason, str):
                log(f"[{name}] skipped: {sys_or_reason}")
                results[name] = {"status": "skipped", "reason": sys_or_reason, "workloads": {}}
            else:
                systems[name] = sys_or_reason
        ran = await run_workloads(server, systems, args)
        results = {name: results.get(name) or ran[name] for name in args.systems}
        if "shoal" in args.systems:
            for key, fn in SHOAL_ONLY_FNS.items():
                if key not in args.shoal_only:
                    continue
                try:
                    shoal_only[key] = await fn(server, args)
                except (AdapterError, OSError, asyncpg.PostgresError, TimeoutError, AssertionError) as exc:
                    log(f"[shoal] {SHOAL_ONLY[key]} FAILED: {exc!r}")
                    shoal_only[key] = {"status": "failed", "error": repr(exc)[:500]}
    finally:
        server.stop()
    report = {
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": time.monotonic() - START,
        "args": {"command": args.command, "jobs": args.jobs, "pickups": args.pickups, "rounds": args.rounds,
                 "quick": args.quick,
                 "systems": args.systems, "fast_unsafe": args.fast_unsafe},
        "machine": machine_info(server_version, peers, args.fast_unsafe),
        "systems": results,
        "shoal_only": shoal_only,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render_table(results))
    print()
    print(RATIO_NOTE)
    if shoal_only:
        print()
        print(render_shoal_only(shoal_only))
        print()
        print(render_targets(report))
    print(f"\nresults: {args.output_shown}")
    partial = (args.quick or args.only is not None or set(args.workloads) != set(WORKLOADS)
               or set(args.shoal_only) != set(SHOAL_ONLY))
    if not args.no_docs and (args.write_docs or not partial):
        write_docs(report)
        print(f"docs:    {DOCS.relative_to(ROOT)} (generated section updated)")
    else:
        print("docs:    not updated (partial run; pass --write-docs to force)")
    return 0 if all(r["status"] in ("ok", "pending", "skipped", "partial") for r in results.values()) else 1


def main() -> int:
    return asyncio.run(amain(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
