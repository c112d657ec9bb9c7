"""Chaos scenarios e-h: a poison job, SIGSTOP of a held-claims worker, flow control while workers
are killed, and a one-million-job backlog. (a-d and the shared scene are in chaos_scenarios.py.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from chaos_lib import (
    Fleet,
    enqueue,
    final_count,
    first_beat_after,
    open_runs,
    open_transactions,
    say,
    wait_final,
    wait_open_runs,
)
from chaos_metrics import Sampler
from chaos_scenarios import Ctx, Scene, conclude, measured, scene, short_or_long, sleeps
from chaos_truth import Result, intervals, max_concurrency, max_starts_in_window, slot_reuse

from shoal import client, queues
from shoal.client import NewJob
from shoal.ratelimit import RateLimit


# -- e: a poison job ----------------------------------------------------------------------------------
async def poison(ctx: Ctx, held: bool) -> Result:
    name, n, max_attempts = ("e-held" if held else "e-leased"), 1_000, 3
    async with scene(ctx, name, max_attempts=max_attempts) as s:
        jobs = sleeps(name, n, short_or_long(held, 3))
        at = n * 9 // 10 if held else n // 2  # held claims engage only after a few hundred short jobs
        jobs[at] = NewJob(name, "chaos.poison")
        ids = await enqueue(s.conn, jobs)
        fleet = s.fleet(ctx, concurrency=20, extra=() if held else ("--no-held-claims",),
                           record="batch" if held else "sync")
        t0 = time.time()
        fleet.start(2)
        sampler = Sampler(fleet).start()
        await conclude(s, fleet, ids, 120, t0, poison=frozenset({ids[at]}))
        await sampler.stop()
        row = await s.conn.fetchrow("SELECT state::text, attempts FROM shoal.jobs WHERE id = $1", ids[at])
        res = s.result
        deaths = sum(f.kind == "died" and "before it started" not in f.note for f in fleet.faults)
        res.metrics.update(poison_state=row and row["state"], poison_attempts=row and row["attempts"],
                           worker_deaths=deaths)
        measured(res, sampler, held)
        res.promise(bool(row) and row["state"] == "failed" and row["attempts"] == max_attempts,
                    f"the poison ended {row and row['state']} after {row and row['attempts']} attempts "
                    f"({deaths} worker deaths; expected failed after {max_attempts})")
        res.promise(res.charged_jobs == 0, f"{res.charged_jobs} innocent jobs charged {res.charged_attempts} "
                    "attempts they never ran")
        return res


# -- f: SIGSTOP of a held-claims worker ---------------------------------------------------------------
async def sigstop(ctx: Ctx) -> Result:
    name, stale = "f-sigstop", 6.0
    n, stop_for = (10_000, 25.0) if ctx.quick else (30_000, 60.0)
    async with scene(ctx, name) as s:
        ids = await enqueue(s.conn, sleeps(name, n, short_or_long(True, 4)))
        fleet = s.fleet(ctx, concurrency=20, stale_after=stale, record="batch")
        t0 = time.time()
        fleet.start(3)
        sampler = Sampler(fleet).start()
        await s.progress(n // 3, timeout=120)
        held_open = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not held_open:  # stop it while it holds a batch
            if sampler.held_claims(fleet.pid(0))[0]:
                held_open = await open_transactions(s.conn, fleet.ports(0))
            await asyncio.sleep(0.002)
        in_flight = await open_runs(s.truth, fleet.pid(0))
        stop = fleet.signal(0, "stop")
        await asyncio.sleep(0.3)
        still_open = await open_transactions(s.conn, fleet.ports(0))
        left = n - await final_count(s.conn, name)
        say(f"{name}: SIGSTOP pid {stop.pid}: {still_open} open transactions, {in_flight} runs in flight, "
            f"{left} jobs not final; stopped for {stop_for:.0f} s")
        done_at = await wait_final(s.conn, name, n, stop_for)
        left = n - await final_count(s.conn, name)
        recovery = None if done_at is None else round(done_at - stop.at, 1)
        say(f"{name}: " + (f"all final {recovery} s after SIGSTOP" if recovery is not None
                           else f"{left} jobs still not final at SIGCONT"))
        await asyncio.sleep(max(0.0, stop.at + stop_for - time.time()))  # the whole stop, then resume it
        cont = fleet.signal(0, "cont")
        fleet.faults.append(await first_beat_after(s.conn, cont.pid, cont.at))
        await asyncio.sleep(3)  # let the resumed worker show what it does with what it held
        await sampler.stop()
        await conclude(s, fleet, ids, 60, t0)
        res = s.result
        res.recovery_s = recovery if recovery is not None else float("inf")
        res.metrics.update(held_txn_open_at_stop=still_open, runs_in_flight_at_stop=in_flight,
                           not_final_when_continued=left, stopped_s=stop_for)
        measured(res, sampler, True)
        res.promise(done_at is not None, f"{left} jobs waited for the stopped worker ({stop_for:.0f} s, "
                    f"stale-after {stale:.0f} s)")
        res.promise(recovery is None or recovery <= 3 * stale,
                    f"recovery took {recovery} s (> 3 x stale-after)")
        if not still_open:
            res.notes.append("the stopped worker had no open (held) transaction at the stop")
        return res


# -- g: concurrency cap and rate limit while workers are killed ----------------------------------------
async def limits(ctx: Ctx) -> Result:
    name, cap, rate = "g-limits", 5, 50
    n, kills = (600, 2) if ctx.quick else (1_500, 3)
    async with scene(ctx, name, concurrency_limit=cap, rate_limit=RateLimit(rate, 1)) as s:
        ids = await enqueue(s.conn, sleeps(name, n, lambda: 80))
        fleet = s.fleet(ctx, concurrency=cap)
        t0 = time.time()
        fleet.start(3)
        kill_at = []
        for k in range(kills):
            done = await s.progress(n * (k + 1) // (kills + 1), timeout=120)
            in_flight = await wait_open_runs(s.truth, fleet.pid(k % 3), 1, timeout=5)
            f = fleet.signal(k % 3, "kill9")
            kill_at.append(f.at)
            say(f"{name}: kill -9 pid {f.pid} with {in_flight} runs in flight ({done}/{n} final)")
        runs = await conclude(s, fleet, ids, n / rate + 90, t0)
        res = s.result
        spans = intervals(runs, fleet.faults, time.time())
        most = max_concurrency(spans)
        peak = max_starts_in_window([r.started for rs in runs.values() for r in rs], 1.0)
        reuse = [slot_reuse(spans, t, cap) for t in kill_at]
        res.recovery_s = max((float("inf") if r is None else r for r in reuse), default=None)
        res.metrics.update(max_concurrent_runs=most, max_starts_in_1s=peak,
                           slot_reuse_after_kill_s=[None if r is None else round(r, 2) for r in reuse])
        res.promise(most <= cap, f"{most} runs at once (cap {cap})")
        res.promise(peak <= rate, f"{peak} starts within 1 s (limit {rate}/s)")
        return res


# -- h: a big backlog ---------------------------------------------------------------------------------------
async def _drained(s: Scene, since: float, until: float) -> int:
    return int(await s.conn.fetchval(
        "SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND state = 'succeeded' "
        "AND finished_at >= to_timestamp($2) AND finished_at < to_timestamp($3)", s.name, since, until))


async def _window(s: Scene, fleet: Fleet, slot: int, seconds: float, cap: int) -> dict[str, Any]:
    """Let the worker in `slot` drain for `seconds` from its spawn, or until it drained `cap` jobs
    (the next window needs a backlog too); its speed from its first finished job, and memory."""
    spawned = fleet.spawned_at[fleet.pid(slot)]
    rss = 0.0
    while time.time() < spawned + seconds:
        rss = max(rss, fleet.rss_mb())
        if await _drained(s, spawned, time.time() + 60) >= cap:
            break
        await asyncio.sleep(0.5)
    stop = min(time.time(), spawned + seconds)
    fleet.signal(slot, "term")
    await fleet.wait_exit(slot, 40)
    first = await s.conn.fetchval(
        "SELECT extract(epoch FROM min(finished_at))::float8 FROM shoal.jobs WHERE queue = $1 "
        "AND state = 'succeeded' AND finished_at >= to_timestamp($2)", s.name, spawned)
    first = stop if first is None else min(first, stop)
    return {"startup_s": round(first - spawned, 1), "drained": await _drained(s, spawned, stop + 60),
            "max_rss_mb": round(rss, 1), "from": first, "to": stop}


async def _speed(s: Scene, window: dict[str, Any], seconds: float) -> int:
    """Jobs per second over the first `seconds` after the window's first finished job."""
    if seconds <= 0:
        return 0
    return round(await _drained(s, window["from"], window["from"] + seconds) / seconds)


async def _stats_latency(s: Scene) -> dict[str, float]:
    env = {**os.environ, "SHOAL_DATABASE_URL": s.url, "PYTHONSAFEPATH": "1"}
    started = time.monotonic()
    await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "shoal.cli", "stats"], env=env,
                            capture_output=True, check=True)
    cli = time.monotonic() - started
    started = time.monotonic()
    await queues.state_counts(s.conn)
    return {"stats_cli_s": round(cli, 2), "stats_query_s": round(time.monotonic() - started, 2)}


async def _analyzed(s: Scene) -> bool:
    row = await s.conn.fetchrow("SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables "
                                "WHERE relid = 'shoal.jobs'::regclass")
    return bool(row and (row["last_analyze"] or row["last_autoanalyze"]))


async def backlog(ctx: Ctx) -> Result:
    name, n, batch = "h-backlog", ctx.backlog, 50_000
    window = 10.0 if ctx.quick else 15.0
    async with scene(ctx, name) as s:
        # "Fresh" means autovacuum has not analysed it yet, which it may do any time within its
        # naptime (60 s) of the enqueue: keep it off the table until the fresh drain is measured.
        await s.conn.execute("ALTER TABLE shoal.jobs SET (autovacuum_enabled = false)")
        started = time.monotonic()
        for i in range(0, n, batch):
            await client.enqueue_many(s.conn, [NewJob(name, "chaos.noop") for _ in range(min(batch, n - i))])
            if (i // batch) % 4 == 3:
                say(f"{name}: enqueued {i + batch:,}")
        enqueue_s = time.monotonic() - started
        res = s.result
        res.judged, res.enqueued = False, n
        res.metrics.update(enqueue_s=round(enqueue_s, 1), enqueue_jobs_per_s=round(n / enqueue_s),
                           **await _stats_latency(s), analyzed_before_fresh_drain=await _analyzed(s))
        say(f"{name}: {n:,} enqueued in {enqueue_s:.1f} s; stats: {res.metrics['stats_cli_s']} s; draining "
            f"the fresh table for {window:.0f} s")
        fleet = s.fleet(ctx, concurrency=50)
        fleet.start(1)
        fresh = await _window(s, fleet, 0, window, cap=n * 2 // 5)
        res.metrics["analyzed_during_fresh_drain"] = await _analyzed(s)
        await s.conn.execute("ALTER TABLE shoal.jobs RESET (autovacuum_enabled)")
        await s.conn.execute("ANALYZE shoal.jobs")
        say(f"{name}: fresh table: {fresh['drained']:,} jobs drained; ANALYZE; draining again")
        fleet.spawn(1)
        analyzed = await _window(s, fleet, 1, window, cap=n * 2 // 5)
        res.states = {r["state"]: r["count"] for r in await s.conn.fetch(
            "SELECT state::text, count(*) FROM shoal.jobs WHERE queue = $1 GROUP BY 1", name)}
        # Both speeds over the same stretch: the first 10 s after each window's first finished job,
        # or less when a window ended sooner.
        span = min(10.0, *(w["to"] - w["from"] for w in (fresh, analyzed)))
        for w in (fresh, analyzed):
            w["jobs_per_s"] = await _speed(s, w, span)
            del w["from"], w["to"]
        ratio = analyzed["jobs_per_s"] / max(1, fresh["jobs_per_s"])
        res.metrics.update(fresh=fresh, after_analyze=analyzed, speed_measured_over_s=round(span, 1),
                           analyzed_over_fresh=round(ratio, 1))
        if span < 5:
            res.notes.append(f"speeds compared over {span:.1f} s only: use a bigger --backlog")
        res.recovery_s = None
        res.promise(ratio <= 2, f"the fresh table drained {ratio:.1f}x slower than after ANALYZE (target <= 2x)")
        return res
