"""Judging a scenario by the ground truth: the jobs' rows in `shoal.jobs` against the runs the
tasks recorded in `chaos.runs` (bench/chaos_tasks.py) and the faults the harness did.

Definitions (docs/chaos.md has them for readers of the table):
- lost: an enqueued job whose row is gone (succeeded jobs are kept an hour, so a missing row
  never succeeded for sure); stuck: pending or running at the scenario's deadline;
- innocent failure: a job other than the poison that ended `failed`; charged: a job (not the
  poison) whose `attempts` exceeds the runs its handler recorded;
- duplicate: a job run again after, or alongside, a run that completed (ok or error). It was
  "in flight at a fault" when every such superseded run's process was killed, died or stopped
  while the run was going or within `grace` seconds after it ended (before its outcome could be
  written); any other duplicate breaks at-least-once's promise of one completed run per job;
- recovery: for each fault, the time from the fault until every job that had a run in flight
  at it (of that process; of any for a database fault) is final; the largest.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from chaos_lib import Fault

COMPLETED = ("ok", "error")
CRASHES = ("kill9", "died")


@dataclass
class Run:
    job_id: int
    attempt: int
    pid: int
    started: float
    finished: float | None
    outcome: str | None

    @property
    def completed(self) -> bool:
        return self.outcome in COMPLETED


@dataclass
class Result:
    name: str
    enqueued: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    stuck: int = 0
    innocent_failed: int = 0
    charged_jobs: int = 0
    charged_attempts: int = 0
    duplicates: int = 0
    dup_at_fault: int = 0
    dup_resumed: int = 0  # not at fault: run again by a worker resumed after SIGSTOP
    dup_db: int = 0  # not at fault: the completed run ended just before or during a database restart
    recovery_s: float | None = None
    seconds: float = 0.0
    faults: int = 0
    judged: bool = True  # False: the ground-truth columns do not apply (h measures speed only)
    metrics: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duplicate_jobs: list[dict[str, Any]] = field(default_factory=list)
    fault_log: list[dict[str, Any]] = field(default_factory=list)

    def promise(self, ok: bool, text: str) -> None:
        if not ok:
            self.broken.append(text)


async def load_runs(conn: asyncpg.Connection, ids: list[int]) -> dict[int, list[Run]]:
    rows = await conn.fetch("SELECT job_id, attempt, pid, started_at, finished_at, outcome FROM chaos.runs "
                            "WHERE job_id = ANY($1::bigint[]) ORDER BY job_id, started_at", ids)
    runs: dict[int, list[Run]] = defaultdict(list)
    for r in rows:
        runs[r["job_id"]].append(Run(r["job_id"], r["attempt"], r["pid"], r["started_at"], r["finished_at"],
                                     r["outcome"]))
    return runs


def _fault_during(run: Run, faults_of_pid: list[Fault], grace: float) -> str | None:
    """The fault that caught `run` before its outcome could be written, if any: 'kill' or 'stop',
    with how long after the run ended it came."""
    end = float("inf") if run.finished is None else run.finished + grace
    for f in faults_of_pid:
        if f.kind in CRASHES + ("stop",) and run.started <= f.at <= end:
            after = "" if run.finished is None else f" {max(0.0, f.at - run.finished):.2f}s after it ended"
            return ("stop" if f.kind == "stop" else "kill") + after
    return None


# A crash (`-m immediate`) loses commits younger than this: the claims, committed asynchronously
# (sql/004_held_claims.sql), and outcomes still on their way. README: a job may run twice "if it
# was in flight when something crashed (... the database crashing before an outcome's commit)".
CRASH_LOSES = 1.0


def _starting_at_stop(runs: dict[int, list[Run]], faults: list[Fault]) -> set[int]:
    """Runs (by id) that a stopped process was already starting when SIGSTOP froze it: the
    stop can land between a runner taking a job and the handler's first line, and the handler
    then records its start just after SIGCONT. Per SIGCONT at most one run: the process's
    first run started after it, if it started before the process's first heartbeat after it
    (a resumed worker starts nothing new until such a heartbeat gets through). A worker that
    ignored its silence would start many jobs there: all but one are still judged."""
    starting: set[int] = set()
    for cont in (f for f in faults if f.kind == "cont"):
        beat = min((f.at for f in faults if f.kind == "beat" and f.pid == cont.pid and f.at >= cont.at),
                   default=cont.at)
        after = [r for rs in runs.values() for r in rs if r.pid == cont.pid and r.started >= cont.at]
        first = min(after, key=lambda r: r.started, default=None)
        if first is not None and first.started < beat:
            starting.add(id(first))
    return starting


def _after_cont(run: Run, faults_of_pid: list[Fault]) -> float | None:
    """Seconds from its process's last SIGCONT to the run's start (None: not resumed before it)."""
    conts = [f.at for f in faults_of_pid if f.kind == "cont" and f.at <= run.started]
    return round(run.started - max(conts), 4) if conts else None


def _superseded_by_starting(run: Run, rs: list[Run], starting: set[int]) -> str | None:
    """Excuse a completed run when every run of its job that started after it was one a stopped
    process was already starting at its stop (`_starting_at_stop`): in flight at that stop."""
    later = [r for r in rs if r is not run and r.started > run.started]
    if later and all(id(r) in starting for r in later):
        return "run again by a process stopped while starting it"
    return None


def _database_fault(run: Run, downs: list[tuple[str, float, float]]) -> str | None:
    """Why a database stop may excuse a completed run's rerun: the run ended while the server was
    down (its claim or held transaction died with the stop, its outcome could not be written),
    or just before a crash took its outcome's (or claim's) commit. A run that ended before a
    clean stop (`-m fast`) has no excuse: its outcome is written on reconnect."""
    if run.finished is None:
        return None
    for kind, start, up in downs:
        if start <= run.finished <= up:
            return f"database {kind[3:]} stop {run.finished - start:.2f}s before it ended"
        if kind == "db-immediate" and start - CRASH_LOSES <= run.finished < start:
            return f"database crash {start - run.finished:.2f}s after it ended"
    return None


async def judge(conn: asyncpg.Connection, truth: asyncpg.Connection, result: Result, ids: list[int],
                faults: list[Fault], *, poison: set[int] | frozenset[int] = frozenset(),
                grace: float = 2.0) -> dict[int, list[Run]]:
    """Fill `result` from the database; returns the runs by job for scenario-specific checks."""
    jobs = {r["id"]: r for r in await conn.fetch(
        "SELECT id, state::text AS state, attempts, extract(epoch FROM finished_at)::float8 AS fin "
        "FROM shoal.jobs WHERE id = ANY($1::bigint[])", ids)}
    runs = await load_runs(truth, ids)
    result.enqueued = len(ids)
    result.fault_log = [{"kind": f.kind, "at": round(f.at, 3), "pid": f.pid, "note": f.note} for f in faults]
    result.faults = sum(f.kind in CRASHES + ("stop", "db-immediate", "db-fast") for f in faults)
    states: dict[str, int] = defaultdict(int)
    for j in jobs.values():
        states[j["state"]] += 1
    result.states = dict(states)
    result.lost = len(ids) - len(jobs)
    result.stuck = states["pending"] + states["running"]
    result.innocent_failed = sum(1 for j in jobs.values() if j["state"] == "failed" and j["id"] not in poison)
    uncounted = 0
    for job_id, j in jobs.items():
        if job_id in poison:
            continue
        extra = j["attempts"] - len(runs.get(job_id, []))
        if extra > 0:
            result.charged_jobs += 1
            result.charged_attempts += extra
        uncounted += extra < 0
    if uncounted:
        result.notes.append(f"{uncounted} jobs ran more times than their `attempts` say")

    by_pid: dict[int | None, list[Fault]] = defaultdict(list)
    for f in faults:
        by_pid[f.pid].append(f)
    downs = []  # (kind, database stopped, back)
    for f in faults:
        if f.kind in ("db-immediate", "db-fast"):
            downs.append((f.kind, f.at, min((g.at for g in faults if g.kind == "db-up" and g.at >= f.at),
                                            default=f.at)))
    examples: list[dict[str, Any]] = []
    starting = _starting_at_stop(runs, faults)
    for job_id, rs in runs.items():
        superseded = [c for c in rs if c.completed and any(r is not c and r.started > c.started for r in rs)]
        superseded += [c for c in rs if c.completed and c not in superseded
                       and any(r is not c and r.completed and r.started == c.started for r in rs)]
        if not superseded:
            continue
        result.duplicates += 1
        excuses = [_fault_during(c, by_pid[c.pid], grace) or _database_fault(c, downs)
                   or _superseded_by_starting(c, rs, starting) for c in superseded]
        at_fault = all(excuses)
        result.dup_at_fault += at_fault
        # A later run by a worker that had been stopped before it started: it ran a job it had
        # claimed before the stop although the job had been given to another worker meanwhile.
        resumed = not at_fault and any(
            r.started > min(c.started for c in superseded) and any(
                f.kind == "stop" and f.at < r.started for f in by_pid[r.pid]) for r in rs)
        result.dup_resumed += resumed
        # A completed run that ended shortly before or while the database was down.
        around_db = not at_fault and any(c.finished is not None and start - grace <= c.finished <= up
                                         for c in superseded for _, start, up in downs)
        result.dup_db += around_db
        examples.append({
            "job_id": job_id, "in_flight_at_fault": at_fault, "excuses": excuses, "resumed": resumed,
            "around_db_restart": around_db, "final_state": jobs[job_id]["state"] if job_id in jobs else "lost",
            "runs": [{"pid": r.pid, "attempt": r.attempt, "started": round(r.started, 3),
                      "finished": None if r.finished is None else round(r.finished, 3),
                      "outcome": r.outcome, "after_sigcont": _after_cont(r, by_pid[r.pid])} for r in rs],
        })
    # Up to 40 examples, the unexcused ones first.
    result.duplicate_jobs = sorted(examples, key=lambda d: d["in_flight_at_fault"])[:40]
    result.recovery_s = recovery(faults, runs, {i: j["fin"] for i, j in jobs.items()})
    return runs


def recovery(faults: list[Fault], runs: dict[int, list[Run]], final_at: dict[int, float | None]) -> float | None:
    """The largest time from a fault to the last final state among the jobs it caught in flight;
    inf when one of those never became final; None when no fault caught a run."""
    worst: float | None = None
    for f in faults:
        if f.kind not in CRASHES + ("stop", "db-immediate", "db-fast"):
            continue
        caught = {job_id for job_id, rs in runs.items() for r in rs
                  if (f.pid is None or r.pid == f.pid) and r.started <= f.at
                  and (r.finished is None or r.finished > f.at)}
        if not caught:
            continue
        ends = [final_at.get(j) for j in caught]
        took = float("inf") if any(e is None for e in ends) else max(0.0, max(e for e in ends if e) - f.at)
        worst = took if worst is None else max(worst, took)
    return worst


# -- flow control from the runs --------------------------------------------------------------------
def intervals(runs: dict[int, list[Run]], faults: list[Fault], end: float) -> list[tuple[float, float]]:
    """[start, end) of every run; a run whose process was killed ends at the kill, one that never
    ended otherwise at `end`."""
    crash_at: dict[int, list[float]] = defaultdict(list)
    for f in faults:
        if f.kind in CRASHES and f.pid is not None:
            crash_at[f.pid].append(f.at)
    out = []
    for rs in runs.values():
        for r in rs:
            stop = r.finished
            if stop is None:
                stop = min((t for t in crash_at.get(r.pid, []) if t >= r.started), default=end)
            out.append((r.started, stop))
    return out


def _steps(spans: list[tuple[float, float]]) -> list[tuple[float, int]]:
    """(time, concurrency after every change at that time), in time order."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    out: list[tuple[float, int]] = []
    level = 0
    for t, d in events:
        level += d
        if out and out[-1][0] == t:
            out[-1] = (t, level)
        else:
            out.append((t, level))
    return out


def max_concurrency(spans: list[tuple[float, float]]) -> int:
    return max((level for _, level in _steps(spans)), default=0)


def max_starts_in_window(starts: list[float], width: float) -> int:
    starts = sorted(starts)
    best = 0
    for i, s in enumerate(starts):
        best = max(best, bisect.bisect_left(starts, s + width) - i)
    return best


def slot_reuse(spans: list[tuple[float, float]], at: float, cap: int) -> float | None:
    """Seconds from `at` (a kill) until the runs fill all `cap` slots again; None if never."""
    for t, level in _steps(spans):
        if t >= at and level >= cap:
            return t - at
    return None
