"""Bursts drained by the local autoscaler under each scaling policy (issue 18, item 2).

    .venv/bin/python bench/burst_policy.py            # the full run (~10 min)
    .venv/bin/python bench/burst_policy.py --quick    # a small run (a smoke test of the fields)

`shoal up`'s backend: the shared autoscaler loop (`shoal.scaler.loop.Autoscaler`, as
`shoal.scaler.local.local_autoscaler` builds it, plus a tick callback to count scale events)
driving real `shoal worker` processes, against an embedded PostgreSQL (or SHOAL_DATABASE_URL).
Jobs are the built-in ``shoal.sleep``. Per workload and policy, on a fresh queue:

1. The loop starts at the floor (min 1 worker) with concurrency 10, max 16 workers, a
   5 s scale-down delay (`shoal up`'s default) and 1 s ticks.
2. **Warm-up** (not measured): a trickle of the same jobs at a fifth of one worker's
   capacity for `warmup` seconds, so the loop has measured how long a job takes, as it has
   for any queue that has seen traffic. Policies that do not use it are warmed the same way.
   The "cold" rows skip it: the drain rule then has no speed yet and falls back to the
   default rule, by design.
3. **Burst**: every job enqueued in one transaction. Every 0.5 s the live worker processes
   are sampled (those requested plus those still draining after SIGTERM) and integrated into
   replica-seconds. Worker start-up (~0.5-1 s a process) is inside every figure.
4. Drain time = from the start of the burst's enqueue to the first 0.1 s poll that finds no
   job of the queue pending or running (succeeded jobs are deleted, the default retention).
   Replica-seconds are reported until then (``replica_s_drain``) and until the count is
   back at the floor after the scale-down delay (``replica_s``, the burst's whole cost).
   Scale events are the loop's replica writes after the burst.

The objective is met when drain time <= 1.2 × the objective. Results go to
bench/results/burst_policy.json (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from shoal.client import NewJob, enqueue_many
from shoal.migrate import migrate
from shoal.queues import declare_queue
from shoal.scaler.decision import Policy
from shoal.scaler.local import LocalWorkers
from shoal.scaler.loop import Autoscaler, EnqueueWakeups, TickReport, create_measure_pool
from shoal.testing.machine import cpu_model
from shoal.testing.postgres import database

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "burst_policy.json"
SAMPLE = 0.5  # s between replica samples
TOLERANCE = 1.2  # an objective is met within +20%


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: int
    seconds: float  # per job


@dataclass(frozen=True)
class Variant:
    name: str
    drain_within: float | None
    warm: bool = True


FULL: dict[str, Any] = {
    "workloads": [Workload("30000 x 20 ms", 30_000, 0.020), Workload("2000 x 500 ms", 2_000, 0.5)],
    "variants": [Variant("today", None), Variant("drain 30 s", 30.0), Variant("drain 120 s", 120.0),
                 Variant("drain 120 s cold", 120.0, warm=False)],
    "max_replicas": 16, "concurrency": 10, "scale_down_delay": 5.0, "interval": 1.0, "warmup": 12.0,
    "worker_args": [],
}
QUICK: dict[str, Any] = {
    "workloads": [Workload("400 x 20 ms", 400, 0.020)],
    "variants": [Variant("today", None), Variant("drain 5 s", 5.0)],
    "max_replicas": 4, "concurrency": 10, "scale_down_delay": 1.0, "interval": 0.5, "warmup": 2.0,
    # Quick only: beats every 0.5 s so a 2 s warm-up measures a job's duration.
    "worker_args": ["--heartbeat-interval", "0.5", "--stale-after", "3"],
}


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = round(kib / 2**20, 1)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu, "memory_gib": memory,
            "os": platform.platform(), "python": platform.python_version(), "asyncpg": asyncpg.__version__}


class Sampler:
    """Live worker processes every SAMPLE seconds, integrated into replica-seconds."""

    def __init__(self, workers: LocalWorkers) -> None:
        self.workers = workers
        self.samples: list[tuple[float, int]] = []

    def alive(self) -> int:
        return sum(1 for p in self.workers.procs + self.workers.stopping if p.returncode is None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append((time.monotonic(), self.alive()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE)

    def replica_seconds(self, start: float, end: float) -> float:
        total = 0.0
        for (t, n), (t_next, _) in zip(self.samples, [*self.samples[1:], (end, 0)], strict=True):
            lo, hi = max(t, start), min(t_next, end)
            if hi > lo:
                total += n * (hi - lo)
        return total

    def peak(self, start: float, end: float) -> int:
        return max((n for t, n in self.samples if start <= t <= end), default=0)


async def wait_until(check: Any, timeout: float, every: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


async def run_one(url: str, pool: asyncpg.Pool, wakeups: EnqueueWakeups, cfg: dict[str, Any], load: Workload,
                  variant: Variant, index: int, log_dir: str) -> dict[str, Any]:
    queue = f"burst-{index}"
    await declare_queue(pool, queue)
    policy = Policy(min_replicas=1, max_replicas=cfg["max_replicas"], concurrency=cfg["concurrency"],
                    scale_down_delay=cfg["scale_down_delay"], drain_within=variant.drain_within)
    workers = LocalWorkers(url, queue, concurrency=cfg["concurrency"], extra_args=cfg["worker_args"],
                           log_dir=os.path.join(log_dir, queue))
    events: list[tuple[float, int, int, str]] = []  # (time, from, to, reason) of every replica write

    def on_tick(report: TickReport) -> None:
        if report.scaled:
            events.append((time.monotonic(), report.before, report.decision.desired, report.decision.reason))

    # What `local_autoscaler` builds, with a tick callback.
    scaler = Autoscaler(target=workers, queue=queue, pool=pool, policy=lambda: policy, interval=cfg["interval"],
                        wakeups=wakeups, on_tick=on_tick, name=f"bench queue {queue!r}")
    stop, sampling = asyncio.Event(), asyncio.Event()
    loop_task = asyncio.create_task(scaler.run(stop))
    sampler = Sampler(workers)
    sample_task = asyncio.create_task(sampler.run(sampling))

    async def outstanding() -> int:
        return int(await pool.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND state IN "
                                       "('pending', 'running')", queue))

    try:
        live = "SELECT count(*) FROM shoal.workers WHERE queue = $1 AND heartbeat_at > now() - interval '10 s'"

        async def worker_up() -> bool:
            return bool(await pool.fetchval(live, queue))

        await wait_until(worker_up, 30)
        payload = {"seconds": load.seconds}
        if variant.warm:
            rate = 0.2 * cfg["concurrency"] / load.seconds  # jobs/s: a fifth of one worker
            started, sent = time.monotonic(), 0
            while (elapsed := time.monotonic() - started) < cfg["warmup"]:
                due = int(elapsed * rate) + 1 - sent
                if due > 0:
                    await enqueue_many(pool, [NewJob(queue, "shoal.sleep", payload) for _ in range(due)])
                    sent += due
                await asyncio.sleep(0.05)

            async def drained_and_known() -> bool:
                known = variant.drain_within is None or scaler.state.speed.seconds_per_run is not None
                return known and await outstanding() == 0

            await wait_until(drained_and_known, 60)
        await wait_until(lambda: _true(len(workers.procs) == 1 and not workers.stopping), 60)
        first_id = int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM shoal.jobs")) + 1
        events.clear()
        t0 = time.monotonic()
        await enqueue_many(pool, [NewJob(queue, "shoal.sleep", payload) for _ in range(load.jobs)])

        async def done() -> bool:
            return await outstanding() == 0

        if not await wait_until(done, 600, every=0.1):
            raise TimeoutError(f"{load.name} / {variant.name}: not drained in 600 s")
        t_drained = time.monotonic()

        async def back_at_floor() -> bool:
            return len(workers.procs) == 1 and sampler.alive() == 1

        await wait_until(back_at_floor, cfg["scale_down_delay"] + 60)
        t_floor = time.monotonic()
        failed = int(await pool.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND id >= $2",
                                         queue, first_id))  # succeeded jobs are deleted (the default)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await loop_task
        sampling.set()
        await sample_task
        await workers.shutdown()
    drain = t_drained - t0
    objective = variant.drain_within
    return {
        "workload": load.name, "jobs": load.jobs, "job_seconds": load.seconds, "policy": variant.name,
        "drain_within": objective, "warm": variant.warm, "not_succeeded": failed,
        "drain_s": round(drain, 2),
        "replica_s": round(sampler.replica_seconds(t0, t_floor), 1),
        "replica_s_drain": round(sampler.replica_seconds(t0, t_drained), 1),
        "peak_replicas": sampler.peak(t0, t_floor),
        "scale_events": len(events),
        "objective_met": None if objective is None else drain <= objective * TOLERANCE,
        "speed_seen": {"seconds_per_run": scaler.state.speed.seconds_per_run,
                       "replica_rate": scaler.state.speed.replica_rate},
        "events": [{"t": round(t - t0, 2), "from": a, "to": b, "reason": r} for t, a, b, r in events],
    }


async def _true(value: bool) -> bool:
    return value


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload: each warm drain policy's replica-seconds as a share of today's rule."""
    out = []
    for load in dict.fromkeys(r["workload"] for r in results):
        rows = [r for r in results if r["workload"] == load]
        today = next((r for r in rows if r["drain_within"] is None), None)
        for r in rows:
            if today is None or r["drain_within"] is None:
                continue
            out.append({"workload": load, "policy": r["policy"], "objective_met": r["objective_met"],
                        "replica_s_share_of_today": round(r["replica_s"] / today["replica_s"], 3),
                        "replica_s_drain_share_of_today": round(r["replica_s_drain"] / today["replica_s_drain"], 3)})
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<15} {'policy':<17} {'drain s':>8} {'replica-s':>10} {'(to drain)':>10} {'peak':>5} "
            f"{'events':>6}  objective")
    lines = [head, "-" * len(head)]
    for r in results:
        met = "-" if r["objective_met"] is None else ("met" if r["objective_met"] else "MISSED")
        lines.append(f"{r['workload']:<15} {r['policy']:<17} {r['drain_s']:>8.1f} {r['replica_s']:>10.1f} "
                     f"{r['replica_s_drain']:>10.1f} {r['peak_replicas']:>5} {r['scale_events']:>6}  {met}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cfg = QUICK if args.quick else FULL
    started = time.time()
    results: list[dict[str, Any]] = []
    with database("shoal-burst-") as url, tempfile.TemporaryDirectory(prefix="shoal-burst-logs-") as logs:
        await migrate(url)
        pool = await create_measure_pool(url, max_size=4)
        wakeups = EnqueueWakeups(url)
        try:
            version = await pool.fetchval("SHOW server_version")
            index = 0
            for load in cfg["workloads"]:
                for variant in cfg["variants"]:
                    index += 1
                    print(f"{load.name}: {variant.name} ...", file=sys.stderr, flush=True)
                    results.append(await run_one(url, pool, wakeups, cfg, load, variant, index, logs))
        finally:
            await wakeups.close()
            await pool.close()
    return {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - started, 1),
        "quick": bool(args.quick),
        "machine": {**machine(), "postgresql": version},
        "config": {k: v for k, v in cfg.items() if k not in ("workloads", "variants")}
        | {"tolerance": TOLERANCE, "sample_seconds": SAMPLE, "min_replicas": 1},
        "results": results,
        "comparison": compare(results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test), not the measured one")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {OUT}; none with --quick)")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    out = args.out or (None if args.quick else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["results"]))
    for c in report["comparison"]:
        print(f"{c['workload']}: {c['policy']} uses {c['replica_s_share_of_today']:.0%} of today's replica-seconds "
              f"({c['replica_s_drain_share_of_today']:.0%} until drained); objective "
              f"{'met' if c['objective_met'] else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
