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
processes; (c) pickup latency of one job sent to an idle worker; peak worker RSS. The
Shoal-only workloads (d)-(g) are placeholders until Shoal's adapter exists.

Writes bench/results/latest.json and, for full runs, the generated part of
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
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_DIR = BENCH / "peers"
STATE = BENCH / ".peers"
LOGS = STATE / "logs"
RESULTS = BENCH / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

sys.path.insert(0, str(BENCH))
import setup_peers  # noqa: E402

ALL_SYSTEMS = ["shoal", "bare", "pgqueuer", "procrastinate", "graphile-worker", "pg-boss"]
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
        remaining = jobs
        while True:
            elapsed = time.time() - t0
            remaining = int(await conn.fetchval(remaining_sql))
            if remaining == 0:
                break
            if not all(p.alive() for p in procs):
                dead = next(p for p in procs if not p.alive())
                raise AdapterError(f"{dead.log_name} exited: {dead.stderr_tail()}")
            if elapsed > timeout:
                done = jobs - remaining
                log(f"[{system.name}] drain x{workers}: TIMEOUT after {elapsed:.0f}s, {done:,} done")
                rss = await sampler.stop()
                sampler = None
                return {"jobs": jobs, "workers": workers, "seconds": elapsed, "jobs_per_s": done / elapsed,
                        "timeout": True, "worker_rss_mb": rss}
            if time.time() - last_report >= 2:
                last_report = time.time()
                done = jobs - remaining
                log(f"[{system.name}] drain x{workers}: {done:,}/{jobs:,} done, "
                    f"{done / max(elapsed, 1e-9):,.0f} jobs/s so far")
            # Poll often enough to keep the end-time error under ~1% without loading the server.
            await asyncio.sleep(min(0.5, max(0.01, elapsed / 100)))
        seconds = time.time() - t0
        rss = await sampler.stop()
        sampler = None
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


async def run_system(server: Server, system: System, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "ok", "workloads": {}}
    plan: list[tuple[str, Any, dict[str, Any]]] = [
        ("enqueue", w_enqueue, {"jobs": args.jobs}),
        ("drain1", w_drain, {"jobs": args.jobs, "workers": 1}),
        ("drain2", w_drain, {"jobs": args.jobs, "workers": 2}),
        ("latency", w_latency, {"pickups": args.pickups}),
    ]
    for name, fn, kw in plan:
        if name not in args.workloads:
            continue
        try:
            out["workloads"][name] = await fn(server, system, **kw)
        except Pending as exc:
            log(f"[{system.name}] pending: adapter not implemented ({exc})")
            return {"status": "pending", "reason": str(exc), "workloads": {}}
        except (AdapterError, OSError, asyncpg.PostgresError) as exc:
            log(f"[{system.name}] {name} FAILED: {exc}")
            out["workloads"][name] = {"error": str(exc)}
    errors = sum("error" in w for w in out["workloads"].values())
    if errors:
        out["status"] = "failed" if errors == len(out["workloads"]) else "partial"
    out["version"] = system.info.get("version")
    out["config"] = system.info.get("config", {})
    return out


# Workloads (d)-(g) need Shoal itself; these placeholders keep their names in the run.
async def w_ready_count_cost(server: Server) -> dict[str, Any]:
    log(f"[shoal] {SHOAL_ONLY['ready_count_cost']}: pending: needs Shoal")
    return {"status": "pending"}


async def w_autoscale_reaction(server: Server) -> dict[str, Any]:
    log(f"[shoal] {SHOAL_ONLY['autoscale_reaction']}: pending: needs Shoal")
    return {"status": "pending"}


async def w_operator_memory(server: Server) -> dict[str, Any]:
    log(f"[shoal] {SHOAL_ONLY['operator_memory']}: pending: needs Shoal")
    return {"status": "pending"}


async def w_mixed_retries_rate_limit(server: Server) -> dict[str, Any]:
    log(f"[shoal] {SHOAL_ONLY['mixed_retries_rate_limit']}: pending: needs Shoal")
    return {"status": "pending"}


SHOAL_ONLY_FNS = {"ready_count_cost": w_ready_count_cost, "autoscale_reaction": w_autoscale_reaction,
                  "operator_memory": w_operator_memory, "mixed_retries_rate_limit": w_mixed_retries_rate_limit}


# --------------------------------------------------------------------------- report


def machine_info(server_version: str, peers: setup_peers.PeerEnv, fast_unsafe: bool) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
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
              "It is blank while Shoal's adapter is pending.")


def render_generated(report: dict[str, Any]) -> str:
    m, a = report["machine"], report["args"]
    lines = [
        f"Command: `{a['command']}` — {a['jobs']:,} jobs per throughput workload, {a['pickups']} pickups; "
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
    pend = [f"{SHOAL_ONLY[k]}" for k, v in report["shoal_only"].items() if v.get("status") == "pending"]
    if pend:
        lines += ["", "Shoal-only workloads pending (need Shoal): " + "; ".join(pend) + "."]
    return "\n".join(lines)


BEGIN, END = "<!-- BEGIN GENERATED by bench/run.py -->", "<!-- END GENERATED -->"


def write_docs(report: dict[str, Any]) -> None:
    text = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Latest run\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{render_generated(report)}\n{END}{tail}")


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=None, help="jobs per throughput workload (default 50,000)")
    p.add_argument("--pickups", type=int, default=None, help="pickups measured for latency (default 50)")
    p.add_argument("--quick", action="store_true", help="5,000 jobs and 10 pickups, for development")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    p.add_argument("--fast-unsafe", action="store_true",
                   help="run PostgreSQL with fsync off (faster, not comparable with published figures)")
    p.add_argument("--write-docs", action="store_true",
                   help="update docs/benchmarks.md even for --quick/--only runs")
    p.add_argument("--no-docs", action="store_true", help="never touch docs/benchmarks.md")
    args = p.parse_args()
    args.jobs = args.jobs or (5000 if args.quick else 50_000)
    args.pickups = args.pickups or (10 if args.quick else 50)
    args.systems = ALL_SYSTEMS if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.systems) - set(ALL_SYSTEMS)
    if unknown:
        p.error(f"unknown system(s): {', '.join(sorted(unknown))}; choose from {', '.join(ALL_SYSTEMS)}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(args.workloads) - set(WORKLOADS):
        p.error(f"unknown workload(s); choose from {', '.join(WORKLOADS)}")
    args.command = "python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    return args


async def amain(args: argparse.Namespace) -> int:
    log("setting up peers (bench/.peers/)")
    peers = setup_peers.ensure_peers(lambda m: log(f"[setup] {m}"))
    for name, why in peers.unavailable.items():
        log(f"[setup] {name} unavailable: {why}")
    log(f"starting embedded PostgreSQL ({'fast_unsafe: fsync off' if args.fast_unsafe else 'durable: fsync on'})")
    server = Server(args.fast_unsafe)
    results: dict[str, Any] = {}
    shoal_only: dict[str, Any] = {}
    try:
        server_version = str(await server.admin("SHOW server_version"))
        log(f"PostgreSQL {server_version} on {server.base_url}")
        for name in args.systems:
            sys_or_reason = make_system(name, peers)
            if isinstance(sys_or_reason, str):
                log(f"[{name}] skipped: {sys_or_reason}")
                results[name] = {"status": "skipped", "reason": sys_or_reason, "workloads": {}}
                continue
            log(f"[{name}] starting")
            results[name] = await run_system(server, sys_or_reason, args)
        if "shoal" in args.systems:
            for key, fn in SHOAL_ONLY_FNS.items():
                shoal_only[key] = await fn(server)
    finally:
        server.stop()
    report = {
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": time.monotonic() - START,
        "args": {"command": args.command, "jobs": args.jobs, "pickups": args.pickups, "quick": args.quick,
                 "systems": args.systems, "fast_unsafe": args.fast_unsafe},
        "machine": machine_info(server_version, peers, args.fast_unsafe),
        "systems": results,
        "shoal_only": shoal_only,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render_table(results))
    print()
    print(RATIO_NOTE)
    print(f"\nresults: {(RESULTS / 'latest.json').relative_to(ROOT)}")
    partial = args.quick or args.only is not None or set(args.workloads) != set(WORKLOADS)
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
