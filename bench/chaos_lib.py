"""The chaos suite's harness: PostgreSQL servers it can crash, `shoal worker` processes under a
supervisor that restarts them, the faults it does to them, and waiting on progress.

Black-box on purpose: it drives Shoal only through the `shoal` command, `shoal.client` /
`shoal.queues`, plain SQL on `shoal.jobs`, and process signals, so it keeps working while the
worker's internals change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from chaos_tasks import SCHEMA

from shoal import client, queues
from shoal.client import NewJob
from shoal.embedded import EmbeddedPostgres, free_port, start_embedded
from shoal.migrate import migrate

BENCH = Path(__file__).resolve().parent
TEMPLATE = "chaos_template"
FINAL = ("succeeded", "failed", "cancelled")
_T0 = time.monotonic()


def say(msg: str) -> None:
    """One progress line: the suite runs for minutes."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def _with_db(url: str, db: str) -> str:
    return url.rpartition("/")[0] + "/" + db


@dataclass
class Fault:
    """Something done to a process (pid) or to the database (pid None), at epoch time `at`."""

    kind: str  # kill9 | died | stop | cont | term | db-immediate | db-fast | db-up
    at: float
    pid: int | None = None
    note: str = ""


class Server:
    """One embedded PostgreSQL, started on first use; durable (fsync, synchronous commit) or not."""

    def __init__(self, root: Path, durable: bool) -> None:
        self.root, self.durable = root, durable
        self.pg: EmbeddedPostgres | None = None

    async def database(self, name: str) -> str:
        """A fresh migrated database with the chaos schema; its URL."""
        if self.pg is None:
            kind = "durable" if self.durable else "fast"
            say(f"starting embedded PostgreSQL ({kind})")
            self.pg = await asyncio.to_thread(start_embedded, self.root / f"pg-{kind}", fast_unsafe=not self.durable)
            conn = await asyncpg.connect(self.pg.url)
            try:
                await conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
            finally:
                await conn.close()
            await migrate(_with_db(self.pg.url, TEMPLATE))
            conn = await asyncpg.connect(_with_db(self.pg.url, TEMPLATE))
            try:
                await conn.execute(SCHEMA)
            finally:
                await conn.close()
        conn = await asyncpg.connect(self.pg.url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        finally:
            await conn.close()
        return _with_db(self.pg.url, name)

    async def stop(self, mode: str) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.stop, mode)

    async def start(self) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.start)

    def destroy(self) -> None:
        if self.pg is not None:
            self.pg.destroy()


def worker_command(queue: str, concurrency: int, stale_after: float, metrics_port: int,
                   extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", "--log-format", "json", "worker", "--queue", queue,
            "--tasks", "chaos_tasks", "--concurrency", str(concurrency), "--heartbeat-interval", "0.5",
            "--stale-after", str(stale_after), "--poll-interval", "0.2", "--metrics-port", str(metrics_port),
            *extra]


class Fleet:
    """`shoal worker` processes of one queue, in numbered slots, restarted by `supervise` when one
    dies unless it was retired (like a Deployment would). Every fault is recorded."""

    def __init__(self, url: str, queue: str, logs: Path, *, truth_url: str, concurrency: int,
                 stale_after: float = 3.0, extra: Sequence[str] = (), record: str = "sync") -> None:
        self.url, self.queue, self.logs, self.truth_url = url, queue, logs, truth_url
        self.concurrency, self.stale_after, self.extra = concurrency, stale_after, list(extra)
        self.record = record  # how chaos_tasks records runs: sync | batch
        self.pool_size = concurrency if record == "sync" else 2
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.retired: set[int] = set()
        self.faults: list[Fault] = []
        self.pids: list[int] = []
        self.spawned_at: dict[int, float] = {}
        self.metrics_port: dict[int, int] = {}  # pid -> its /metrics port
        self.log_offset: dict[int, int] = {}  # pid -> where its lines start in the slot's log
        self.start_failures: list[str] = []  # workers that exited before they started
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    def spawn(self, slot: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SHOAL_DATABASE_URL": self.url, "PYTHONSAFEPATH": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p),
               "CHAOS_POOL_SIZE": str(self.pool_size), "CHAOS_RUNS_URL": self.truth_url,
               "CHAOS_RECORD": self.record}
        self.logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        with open(self.logs / f"{self.queue}-slot{slot}.log", "ab") as out:
            offset = out.tell()
            proc = subprocess.Popen(worker_command(self.queue, self.concurrency, self.stale_after, port, self.extra),
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        self.metrics_port[proc.pid] = port
        self.log_offset[proc.pid] = offset
        self.procs[slot] = proc
        self.pids.append(proc.pid)
        self.spawned_at[proc.pid] = time.time()
        self.retired.discard(slot)
        return proc

    def start(self, n: int) -> None:
        for slot in range(n):
            self.spawn(slot)
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        handled: set[int] = set()
        due: dict[int, float] = {}  # slot -> when to restart it (backing off a crash loop)
        quick_fails: dict[int, int] = {}
        while True:
            await asyncio.sleep(0.05)
            for slot, proc in list(self.procs.items()):
                if proc.poll() is None or slot in self.retired:
                    continue
                pid = proc.pid
                if pid not in handled:
                    handled.add(pid)
                    started, last = self._log_of(slot, pid)
                    if not started:  # it never got going: the command itself fails
                        self.start_failures.append(f"pid {pid} exit {proc.returncode}: {last}")
                    if not any(f.pid == pid and f.kind in ("kill9", "died") for f in self.faults):
                        note = f"exit {proc.returncode}" + ("" if started else " before it started")
                        self.faults.append(Fault("died", time.time(), pid, note))
                    quick_fails[slot] = 0 if started else quick_fails.get(slot, 0) + 1
                    due[slot] = time.monotonic() + (min(5.0, 0.2 * 2 ** quick_fails[slot]) if not started else 0)
                if time.monotonic() >= due.get(slot, 0):
                    self.restarts += 1
                    self.spawn(slot)

    def _log_of(self, slot: int, pid: int) -> tuple[bool, str]:
        """Whether the process logged that it started, and its last log line."""
        try:
            with open(self.logs / f"{self.queue}-slot{slot}.log", "rb") as f:
                f.seek(self.log_offset.get(pid, 0))
                text = f.read().decode(errors="replace")
        except OSError:
            return False, ""
        lines = [line for line in text.splitlines() if line.strip()]
        return '"worker started"' in text, (lines[-1][:200] if lines else "")

    def pid(self, slot: int) -> int:
        return self.procs[slot].pid

    def signal(self, slot: int, kind: str) -> Fault:
        sig = {"kill9": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT, "term": signal.SIGTERM}[kind]
        proc = self.procs[slot]
        if kind == "term":
            self.retired.add(slot)  # an operator stopping it: not restarted
        # A signal that ends or freezes the process is stamped after it is sent (nothing the
        # process does comes after that stamp); SIGCONT before it, since the process may resume and
        # start a run before this one reads the clock, and the judge counts runs after the SIGCONT.
        sent_at = time.time()
        proc.send_signal(sig)
        fault = Fault(kind, sent_at if kind == "cont" else time.time(), proc.pid)
        self.faults.append(fault)
        return fault

    async def wait_exit(self, slot: int, timeout: float) -> int | None:
        proc = self.procs[slot]
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, timeout)
        return proc.poll()

    def rss_mb(self) -> float:
        total = 0.0
        for proc in self.procs.values():
            with contextlib.suppress(psutil.Error):
                total = max(total, psutil.Process(proc.pid).memory_info().rss / 2**20)
        return total

    def ports(self, slot: int) -> set[int]:
        """Local TCP ports of the worker's connections (to find its backends in pg_stat_activity)."""
        with contextlib.suppress(psutil.Error):
            return {c.laddr.port for c in psutil.Process(self.pid(slot)).net_connections("tcp") if c.laddr}
        return set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the workload ------------------------------------------------------------------------------
async def declare(conn: asyncpg.Connection, queue: str, **options: Any) -> None:
    await queues.declare_queue(conn, queue, keep_succeeded_seconds=3600, **options)


async def enqueue(conn: asyncpg.Connection, jobs: list[NewJob], batch: int = 50_000) -> list[int]:
    ids: list[int] = []
    for i in range(0, len(jobs), batch):
        ids += await client.enqueue_many(conn, jobs[i:i + batch])
    return ids


async def final_count(conn: asyncpg.Connection, queue: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND state IN ('succeeded', 'failed', 'cancelled')", queue))


async def wait_final(conn: asyncpg.Connection, queue: str, target: int, timeout: float) -> float | None:
    """Wait until `target` jobs of the queue are final; the epoch time it happened, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await final_count(conn, queue) >= target:
            return time.time()
        await asyncio.sleep(0.2)
    return None


async def open_runs(conn: asyncpg.Connection, pid: int | None = None) -> int:
    """Runs started and not finished (by one process, or by any)."""
    if pid is None:
        return int(await conn.fetchval("SELECT count(*) FROM chaos.runs WHERE finished_at IS NULL"))
    return int(await conn.fetchval("SELECT count(*) FROM chaos.runs WHERE finished_at IS NULL AND pid = $1", pid))


async def wait_open_runs(conn: asyncpg.Connection, pid: int | None, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = await open_runs(conn, pid)
        if n >= at_least:
            break
        await asyncio.sleep(0.01)
    return n


async def open_transactions(conn: asyncpg.Connection, ports: set[int] | None = None) -> int:
    """Sessions idle inside a transaction (a held batch is one), of the given client ports or of all."""
    rows = await conn.fetch("SELECT client_port FROM pg_stat_activity WHERE datname = current_database() "
                            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")
    return sum(1 for r in rows if ports is None or r["client_port"] in ports)


async def first_beat_after(conn: asyncpg.Connection, pid: int, since: float, timeout: float = 10.0) -> Fault:
    """The first heartbeat of process `pid` written after epoch `since` (polled every millisecond;
    the server's `now()` of that beat), as a `beat` fault record. A resumed worker starts no new
    job before a heartbeat after its silence gets through (worker/keeper.py), so this bounds
    what it could have started only because it was already starting it when stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at = await conn.fetchval("SELECT max(extract(epoch FROM heartbeat_at))::float8 FROM shoal.workers "
                                 "WHERE pid = $1", pid)
        if at is not None and at > since:
            return Fault("beat", at, pid, "first heartbeat after SIGCONT")
        await asyncio.sleep(0.001)
    return Fault("beat", since, pid, "no heartbeat after SIGCONT: nothing it ran after it is excused")
