"""Chaos scenarios a-d: kill -9, database restarts, an outage longer than stale-after, SIGTERM.
(e-h are in chaos_scenarios_flow.py; docs/chaos.md lists them all with their promises.)

Each scenario gets a fresh database, enqueues its jobs, runs real `shoal worker` processes,
does its faults, waits for every job to be final (or its deadline), stops the workers and is
judged on the ground truth (chaos_truth.judge).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from chaos_lib import (
    Fault,
    Fleet,
    Server,
    declare,
    enqueue,
    final_count,
    open_runs,
    say,
    wait_final,
    wait_open_runs,
)
from chaos_metrics import Sampler
from chaos_truth import Result, Run, judge

from shoal.client import NewJob


@dataclass
class Ctx:
    quick: bool
    root: Path
    backlog: int
    fast: Server
    durable: Server

    @property
    def logs(self) -> Path:
        return self.root / "logs"


@dataclass
class Scene:
    name: str
    url: str
    conn: asyncpg.Connection  # to Shoal's database
    truth: asyncpg.Connection  # to the ground truth (chaos.runs), on the fast server: never restarted
    truth_url: str
    result: Result
    fleets: list[Fleet] = field(default_factory=list)

    def fleet(self, ctx: Ctx, **options: Any) -> Fleet:
        fleet = Fleet(self.url, self.name, ctx.logs, truth_url=self.truth_url, **options)
        self.fleets.append(fleet)
        return fleet

    async def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close(timeout=2)
        for _ in range(100):
            try:
                self.conn = await asyncpg.connect(self.url)
                return
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.2)
        raise RuntimeError("the database did not come back")

    async def progress(self, target: int, timeout: float) -> int:
        """Wait until `target` jobs are final (or the timeout); how many are."""
        deadline = time.monotonic() + timeout
        while True:
            done = await final_count(self.conn, self.name)
            if done >= target or time.monotonic() > deadline:
                return done
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def scene(ctx: Ctx, name: str, *, durable: bool = False, **queue: Any) -> AsyncIterator[Scene]:
    started = time.monotonic()
    db = name.replace("-", "_")
    url = await (ctx.durable if durable else ctx.fast).database(db)
    # The runs are recorded beside Shoal's tables, except when the scenario restarts that server.
    truth_url = await ctx.fast.database(db + "_truth") if durable else url
    conn = await asyncpg.connect(url)
    await declare(conn, name, **queue)
    s = Scene(name, url, conn, await asyncpg.connect(truth_url), truth_url, Result(name))
    say(f"{name}: start")
    error: BaseException | None = None
    try:
        yield s
    except BaseException as exc:
        error = exc
        raise
    finally:
        for fleet in s.fleets:
            await fleet.close()
        for conn in (s.conn, s.truth):
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
        s.result.seconds = round(time.monotonic() - started, 1)
        verdict = (f"harness error {error!r}" if error else "BROKEN: " + "; ".join(s.result.broken)
                   if s.result.broken else "OK")
        say(f"{name}: done in {s.result.seconds} s, {verdict}")


def sleeps(queue: str, n: int, ms: Callable[[], float]) -> list[NewJob]:
    return [NewJob(queue, "chaos.sleep", {"ms": ms()}) for _ in range(n)]


def short_or_long(held: bool, seed: int) -> Callable[[], float]:
    """Held claims engage for jobs under 2 ms on average: 0-1 ms sleeps; leased: 1-20 ms."""
    rng = random.Random(seed)
    return (lambda: rng.choice((0, 1))) if held else (lambda: rng.randint(1, 20))


def measured(res: Result, sampler: Sampler, held: bool) -> None:
    """The sampler's figures; whether a `held` scenario really exercised held claims."""
    res.metrics.update(held_claims=sampler.held_share(), handler_ms=sampler.handler_ms())
    if held and not sampler.held_claims()[0]:
        res.notes.append(f"no claim was held (handler {sampler.handler_ms()} ms on average, held claims need "
                         "< 2): this ran on leased claims only")


def standard(res: Result) -> None:
    res.promise(res.lost == 0, f"{res.lost} jobs lost")
    res.promise(res.stuck == 0, f"{res.stuck} jobs stuck pending/running after the deadline")
    res.promise(res.innocent_failed == 0, f"{res.innocent_failed} innocent jobs failed")
    bad = res.duplicates - res.dup_at_fault
    why = [f"{res.dup_resumed} run again by a worker resumed after SIGSTOP"] if res.dup_resumed else []
    why += [f"{res.dup_db} completed within 2 s before a database restart"] if res.dup_db else []
    res.promise(bad == 0, f"{bad} jobs ran again after a completed run not caught by a kill/stop"
                + (f" ({'; '.join(why)})" if why else ""))


async def conclude(s: Scene, fleet: Fleet, ids: list[int], timeout: float, t0: float,
                   poison: frozenset[int] = frozenset()) -> dict[int, list[Run]]:
    """Wait for every job to be final, stop the workers, judge."""
    done_at = await wait_final(s.conn, s.name, len(ids), timeout)
    s.result.metrics["all_final_after_s"] = None if done_at is None else round(done_at - t0, 1)
    if done_at is None:
        say(f"{s.name}: deadline passed with {await final_count(s.conn, s.name)}/{len(ids)} final")
    await fleet.close()
    runs = await judge(s.conn, s.truth, s.result, ids, fleet.faults, poison=poison)
    s.result.metrics["worker_restarts"] = fleet.restarts
    standard(s.result)
    fails = fleet.start_failures
    s.result.promise(not fails, f"{len(fails)} workers exited before they started, e.g. {fails[0] if fails else ''}")
    return runs


# -- a: kill -9 ------------------------------------------------------------------------------------
async def kill9(ctx: Ctx, held: bool) -> Result:
    name = "a-held" if held else "a-leased"
    n, kills = (10_000 if held else 6_000, 10) if ctx.quick else (30_000 if held else 20_000, 10)
    async with scene(ctx, name) as s:
        ids = await enqueue(s.conn, sleeps(name, n, short_or_long(held, 1)))
        fleet = s.fleet(ctx, concurrency=20, extra=() if held else ("--no-held-claims",),
                           record="batch" if held else "sync")
        t0 = time.time()
        fleet.start(3)
        sampler = Sampler(fleet).start()
        for k in range(kills):
            done = await s.progress(n * (k + 1) // (kills + 1), timeout=120)
            if done >= n:
                s.result.notes.append(f"every job was final after {k} kills")
                break
            slot, holding = await sampler.holding_slot(k % 3, timeout=5) if held else (k % 3, False)
            in_flight = await wait_open_runs(s.truth, fleet.pid(slot), 1, timeout=3)
            f = fleet.signal(slot, "kill9")
            say(f"{name}: kill -9 #{k + 1} pid {f.pid} with {in_flight} runs in flight ({done}/{n} final)"
                + (f", {'after' if holding else 'before'} its first held claim" if held else ""))
        await sampler.stop()
        await conclude(s, fleet, ids, 180, t0)
        measured(s.result, sampler, held)
        return s.result


# -- b: PostgreSQL restarts under load ---------------------------------------------------------------
async def db_restart(ctx: Ctx, held: bool) -> Result:
    name = "b-held" if held else "b-leased"
    n = 4_000 if ctx.quick else 10_000
    async with scene(ctx, name, durable=True) as s:
        ids = await enqueue(s.conn, sleeps(name, n, short_or_long(held, 2)))
        fleet = s.fleet(ctx, concurrency=20, extra=() if held else ("--no-held-claims",),
                           record="batch" if held else "sync")
        t0 = time.time()
        fleet.start(2)
        sampler = Sampler(fleet).start()
        outages = []
        for mode, share in (("immediate", 0.3), ("fast", 0.65)):
            done = await s.progress(int(n * share), timeout=120)
            in_flight = await open_runs(s.truth)
            open_txn = await s.conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                             "current_database() AND state LIKE 'idle in transaction%'")
            await s.conn.close()
            fleet.faults.append(Fault(f"db-{mode}", time.time()))
            down = time.monotonic()
            await ctx.durable.stop(mode)
            await ctx.durable.start()
            fleet.faults.append(Fault("db-up", time.time()))
            outages.append(round(time.monotonic() - down, 1))
            say(f"{name}: PostgreSQL stop -m {mode} + start took {outages[-1]} s ({done}/{n} final, "
                f"{in_flight} runs in flight, {open_txn} open transactions)")
            await s.reconnect()
        await sampler.stop()
        await conclude(s, fleet, ids, 180, t0)
        s.result.metrics["outages_s"] = outages
        measured(s.result, sampler, held)
        return s.result


# -- c: an outage longer than stale-after, no worker dies -----------------------------------------------
async def outage(ctx: Ctx) -> Result:
    name, n, stale = "c-outage", 40, 3.0
    async with scene(ctx, name, durable=True) as s:
        ids = await enqueue(s.conn, sleeps(name, n, lambda: 5000))
        fleet = s.fleet(ctx, concurrency=10, stale_after=stale)
        t0 = time.time()
        fleet.start(2)
        in_flight = await wait_open_runs(s.truth, None, 20, timeout=15)
        await asyncio.sleep(0.5)
        await s.conn.close()
        fleet.faults.append(Fault("db-fast", time.time()))
        await ctx.durable.stop("fast")
        down_for = 2 * stale + 4
        say(f"{name}: PostgreSQL stopped (-m fast) with {in_flight} runs in flight; down for {down_for} s")
        await asyncio.sleep(down_for)
        await ctx.durable.start()
        fleet.faults.append(Fault("db-up", time.time()))
        await s.reconnect()
        say(f"{name}: PostgreSQL back")
        await conclude(s, fleet, ids, 90, t0)
        s.result.promise(s.result.duplicates == 0, f"{s.result.duplicates} jobs ran twice although no worker died")
        s.result.metrics["outage_s"] = down_for
        return s.result


# -- d: SIGTERM during long jobs ----------------------------------------------------------------------
async def sigterm(ctx: Ctx) -> Result:
    name, n = "d-sigterm", 50
    async with scene(ctx, name) as s:
        ids = await enqueue(s.conn, sleeps(name, n, lambda: 5000))
        fleet = s.fleet(ctx, concurrency=10, extra=("--drain-timeout", "30"))
        t0 = time.time()
        fleet.start(1)
        pid = fleet.pid(0)
        in_flight = await wait_open_runs(s.truth, pid, 10, timeout=20)
        first = await s.truth.fetchval("SELECT min(started_at) FROM chaos.runs WHERE pid = $1", pid) or time.time()
        await asyncio.sleep(max(0.0, first + 2.5 - time.time()))
        fleet.signal(0, "term")
        say(f"{name}: SIGTERM to pid {pid} with {in_flight} runs in flight")
        code = await fleet.wait_exit(0, 40)
        states = {r["state"]: r["count"] for r in await s.conn.fetch(
            "SELECT state::text, count(*) FROM shoal.jobs GROUP BY 1")}
        by_outcome = {r["outcome"]: r["count"] for r in await s.truth.fetch(
            "SELECT coalesce(outcome, 'unfinished') AS outcome, count(*) FROM chaos.runs WHERE pid = $1 GROUP BY 1",
            pid)}
        ran = by_outcome.get("ok", 0)
        say(f"{name}: worker exited {code}; its runs {by_outcome}; jobs now {states}")
        res = s.result
        res.metrics.update(exit_code=code, after_sigterm_states=states, terminated_worker_runs=by_outcome)
        res.promise(code == 0, f"the worker exited {code} after SIGTERM")
        res.promise(ran == in_flight and states.get("succeeded", 0) == ran,
                    f"{ran} of {in_flight} running jobs finished, {states.get('succeeded', 0)} recorded succeeded")
        res.promise(states.get("running", 0) == 0 and states.get("pending", 0) == n - ran,
                    f"after the drain: {states.get('pending', 0)} pending, {states.get('running', 0)} running "
                    f"(expected {n - ran} pending, 0 running)")
        fleet.spawn(1)
        runs = await conclude(s, fleet, ids, 90, t0)
        rerun = sum(1 for rs in runs.values() if any(r.pid == pid for r in rs) and len(rs) > 1)
        res.metrics["rerun_after_sigterm"] = rerun
        res.promise(rerun == 0, f"{rerun} jobs the terminated worker had started ran again")
        res.promise(res.duplicates == 0, f"{res.duplicates} duplicates (no worker was killed)")
        return res
