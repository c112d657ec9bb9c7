"""bench/scale.py's judging and rendering, on sample results (no benchmark is run, no timing asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scale = _load()
ITEMS = {item.no: item for item in scale.ITEMS}

BURSTS = {
    "finished_at": "2026-12-07T04:26:44Z", "quick": False,
    "results": [{"workload": "30000 x 20 ms", "policy": "drain 120 s", "drain_s": 96.4},
                {"workload": "2000 x 500 ms", "policy": "drain 120 s", "drain_s": 130.0}],
    "comparison": [
        {"workload": "30000 x 20 ms", "policy": "drain 30 s", "objective_met": False, "replica_s_share_of_today": 0.9},
        {"workload": "30000 x 20 ms", "policy": "drain 120 s", "objective_met": True, "replica_s_share_of_today": 0.369},
        {"workload": "30000 x 20 ms", "policy": "drain 120 s cold", "objective_met": True,
         "replica_s_share_of_today": 0.664},
        {"workload": "2000 x 500 ms", "policy": "drain 120 s", "objective_met": True, "replica_s_share_of_today": 0.71},
    ],
}
CPU = {"finished_at": "2026-12-08 10:00:00 UTC", "command": "python bench/cpu_per_job.py",
       "median": {"held": {"rate": 30000, "worker_us": 12.0, "pg_us": 20.0},
                  "leased": {"rate": 25000, "worker_us": 14.0, "pg_us": 30.0},
                  "bare": {"rate": 60000, "worker_us": 10.0, "pg_us": 18.0}}}
DRAIN = {"finished_at": "2026-12-08 10:00:00 UTC", "args": {"command": "python bench/run.py --only shoal,bare"},
         "systems": {"shoal": {"workloads": {"drain1": {"jobs_per_s": 60000.0}, "drain2": {"jobs_per_s": 50000.0}}},
                     "bare": {"workloads": {"drain1": {"jobs_per_s": 64000.0}, "drain2": {"error": "exit 1"}}}}}
WORKERS = {"results": [{"system": "shoal", "procs": 1, "pg_us_per_job": 29.67},
                       {"system": "bare", "procs": 1, "pg_us_per_job": 25.32},
                       {"system": "shoal", "procs": 8, "pg_us_per_job": 35.31},
                       {"system": "bare", "procs": 8, "pg_us_per_job": 27.84}]}
ENQUEUE = {"shoal_over_bare": 0.573, "systems": {
    "shoal": {"status": "ok", "jobs_per_s": 5421.4, "p50_ms": 2.739, "p99_ms": 6.588},
    "bare": {"status": "ok", "jobs_per_s": 9465.4, "p50_ms": 1.497, "p99_ms": 4.472},
    "graphile-worker": {"status": "ok", "jobs_per_s": 1258.2, "p50_ms": 12.646, "p99_ms": 17.998}}}


def test_pytest_summary() -> None:
    out = scale.parse_pytest("....F.\n=== 1 failed, 34 passed, 2 errors in 1.18s ===\n")
    assert (out["passed"], out["failed"], out["errors"]) == (34, 1, 2)
    assert scale.parse_pytest("...\n35 passed in 1.18s\n")["failed"] == 0
    with pytest.raises(ValueError):
        scale.parse_pytest("ERROR: file or directory not found\n")
    assert [c["met"] for c in scale.judge_tests({"passed": 35, "failed": 0, "errors": 0})] == [True]
    assert [c["met"] for c in scale.judge_tests({"passed": 34, "failed": 0, "errors": 1})] == [False]


def test_bursts_judge_the_120_s_rows_of_each_workload() -> None:
    checks = scale.judge_bursts(BURSTS)
    assert [c["met"] for c in checks] == [True, False]  # 0.71 > 0.70 fails although the objective is met
    assert "30000 x 20 ms" in checks[0]["goal"] and "0.37×" in checks[0]["measured"] and "96 s" in checks[0]["measured"]
    one_workload = {**BURSTS, "comparison": BURSTS["comparison"][:3]}
    assert [c["met"] for c in scale.judge_bursts(one_workload)] == [True, None]  # the other is not measured
    quick = {"quick": True, "comparison": [{"workload": "400 x 20 ms", "policy": "drain 5 s", "objective_met": True,
                                            "replica_s_share_of_today": 0.5}]}
    assert [c["met"] for c in scale.judge_bursts(quick)] == [True]


def test_cpu_drain_workers_and_enqueue_goals() -> None:
    cpu = scale.judge_cpu(CPU)
    assert [c["met"] for c in cpu] == [True, False]  # held 1.2×, leased 1.4×
    assert "1.40×" in cpu[1]["measured"]
    drain = scale.judge_drain(DRAIN)
    assert drain[0]["met"] is True and "0.94×" in drain[0]["measured"]
    assert drain[1]["met"] is None and "bare: exit 1" in drain[1]["measured"]
    (workers,) = scale.judge_workers(WORKERS)
    assert workers["met"] is True and workers["measured"].startswith("1.19×") and "bare loop 1.10×" in workers["measured"]
    (enqueue,) = scale.judge_enqueue(ENQUEUE)
    assert enqueue["met"] is False and "Graphile Worker 1,258 jobs/s" in enqueue["measured"]
    assert scale.judge_enqueue({"systems": {}})[0]["met"] is None


def test_unexpected_results_are_a_failed_item_not_a_crash() -> None:
    entry = scale.assess(ITEMS[3], {"median": {"held": {}}}, ran=True, command="python bench/cpu_per_job.py")
    assert entry["status"] == "failed" and "KeyError" in entry["reason"]


def test_render_gives_every_goal_its_verdict_date_and_command() -> None:
    items = [scale.assess(ITEMS[1], {"passed": 35, "failed": 0, "errors": 0, "finished_at": "2026-12-08 10:00:00 UTC"},
                          ran=True, command="python -m pytest tests/scaler/test_drain_objective.py"),
             scale.assess(ITEMS[2], BURSTS, ran=False),
             scale.assess(ITEMS[3], CPU, ran=True, command="python bench/cpu_per_job.py --output x.json"),
             scale.assess(ITEMS[4], DRAIN, ran=True),
             scale.failed(ITEMS[5], "timed out after 2400 s | killed", "python bench/workers_scaling.py"),
             scale.failed(ITEMS[6], "no stored results", None, ran=False)]
    report = {"finished_at": "2026-12-08 10:30:00 UTC", "duration_s": 1800.0, "quick": False,
              "command": "python bench/scale.py --only 1,3,4,5", "machine": {"nproc": 2, "cpu_model": "AMD EPYC"},
              "items": items}
    text = scale.render(report)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| item", "| ---"))]
    assert len(rows) == 1 + 2 + 2 + 2 + 1 + 1
    assert all(len(row.split(" | ")) == 6 for row in rows)  # a `|` inside a cell is escaped
    assert "| *stored*, 2026-12-07 04:26 | `python bench/burst_policy.py` |" in text
    assert "failed: timed out after 2400 s \\| killed" in text and "not measured: no stored results" in text
    assert "`python bench/run.py --only shoal,bare`" in text  # a stored command is read from the results
    assert "**not met**" in text
    assert text.splitlines()[-1] == "Goals: 4 met, 2 not met, 2 not measured, 1 failed."
