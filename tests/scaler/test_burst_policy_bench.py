"""Smoke test of bench/burst_policy.py --quick: it runs and reports every field (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIELDS = {"workload", "jobs", "job_seconds", "policy", "drain_within", "warm", "not_succeeded", "drain_s",
          "replica_s", "replica_s_drain", "peak_replicas", "scale_events", "objective_met", "speed_seen", "events"}


@pytest.mark.slow
def test_quick_burst_benchmark_reports_its_fields(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "burst.json"
    env = {**os.environ, "SHOAL_DATABASE_URL": db_url, "PYTHONSAFEPATH": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "burst_policy.py"), "--quick", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["nproc"] >= 1
    assert [r["policy"] for r in report["results"]] == ["today", "drain 5 s"]
    for row in report["results"]:
        assert FIELDS <= row.keys(), FIELDS - row.keys()
        assert row["not_succeeded"] == 0 and row["peak_replicas"] >= 1
    assert report["results"][0]["objective_met"] is None
    assert isinstance(report["results"][1]["objective_met"], bool)
    (cmp,) = report["comparison"]
    assert {"replica_s_share_of_today", "replica_s_drain_share_of_today"} <= cmp.keys()
    assert "drain s" in done.stdout and "replica-s" in done.stdout
