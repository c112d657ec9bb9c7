"""The chart's alerting rules (charts/shoal/files/alerts.yaml, rendered into a PrometheusRule),
checked with the real promtool: `promtool check rules` on what the chart renders, and
`promtool test rules` with tests/delivery/alerts_test.yaml, which has firing and not-firing
cases for every rule. The rules query only what Shoal exports (test_dashboard's catalogue)
and each points to its runbook in docs/alerts.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from alert_rules import PROMTOOL_DEFAULT, alerts, binary, render_rule, write_rules_file
from test_dashboard import check, parse_promql, shoal_catalogue

from tools import REPO_ROOT

UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOKS = REPO_ROOT / "docs" / "alerts.md"
EXPECTED = {
    "ShoalBacklogGrowing",
    "ShoalOldestReadyJobTooOld",
    "ShoalHighFailureRatio",
    "ShoalNoLiveWorkers",
    "ShoalOperatorDown",
    "ShoalAutoscalerStalled",
}
# Series Prometheus makes itself, which the rules may query besides Shoal's.
PROMETHEUS_SERIES = {"up": {"job", "instance", "namespace", "pod"}}


@pytest.fixture(scope="module")
def promtool() -> Path:
    found = binary("promtool", PROMTOOL_DEFAULT)
    if found is None:
        pytest.skip("promtool is not installed (scripts/setup.sh installs Debian's prometheus package)")
    return found


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules(promtool: Path, tmp_path: Path) -> None:
    rules = write_rules_file(render_rule(), tmp_path / "shoal-rules.yaml")
    proc = run([str(promtool), "check", "rules", str(rules)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in proc.stdout + proc.stderr


def test_promtool_unit_tests(promtool: Path, tmp_path: Path) -> None:
    """alerts_test.yaml against the rules the chart renders by default."""
    write_rules_file(render_rule(), tmp_path / "shoal-rules.yaml")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = run([str(promtool), "test", "rules", UNIT_TESTS.name], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_rule_has_firing_and_quiet_cases() -> None:
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert set(alerts(render_rule())) == EXPECTED
    assert firing == EXPECTED, f"no firing case for {EXPECTED - firing}"
    assert quiet == EXPECTED, f"no not-firing case for {EXPECTED - quiet}"


def test_rules_name_the_queue_and_their_runbook() -> None:
    runbooks = RUNBOOKS.read_text()
    anchors = {_anchor(m) for m in re.findall(r"^#+\s+(.+?)\s*$", runbooks, flags=re.M)}
    for name, rule in alerts(render_rule()).items():
        ann, labels = rule["annotations"], rule["labels"]
        assert labels["severity"] in {"warning", "critical"}, name
        assert ann["summary"] and ann["description"], name
        if name != "ShoalOperatorDown":  # per queue; the operator is one for all queues
            assert "$labels.queue" in ann["summary"] and "$labels.queue" in ann["description"], name
        url = ann["runbook_url"]
        assert url == f"docs/alerts.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/alerts.md has no section {name}"
        assert rule["for"], name


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_rules_query_only_what_shoal_exports() -> None:
    catalogue = {**shoal_catalogue(), **PROMETHEUS_SERIES}
    problems: list[str] = []
    for name, rule in alerts(render_rule()).items():
        q = parse_promql(rule["expr"], f"alert {name}")
        # Scrape labels every series gets (Prometheus / the PodMonitors attach them).
        q.labels = {(m, lbl) for m, lbl in q.labels if lbl not in {"namespace", "job"}}
        problems += check([q], catalogue)
    assert not problems, "\n".join(problems)


def test_prometheus_rule_object() -> None:
    rule = render_rule("alerts.labels.release=kube-prometheus", "alerts.annotations.owner=platform")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    meta = rule["metadata"]
    assert meta["namespace"] == "shoal-system" and meta["name"] == "shoal"
    assert meta["labels"]["release"] == "kube-prometheus"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "shoal"
    assert meta["annotations"] == {"owner": "platform"}
    assert set(rule["spec"]) == {"groups"}
    # spec.groups is the rules source rendered, nothing added or lost: the source's alert
    # names, in order, and the file promtool checks is exactly spec.groups.
    source_names = re.findall(r"^\s+- alert: (\w+)$", (REPO_ROOT / "charts/shoal/files/alerts.yaml").read_text(),
                              flags=re.M)
    assert [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]] == source_names
    assert set(source_names) == EXPECTED


def test_values_reach_the_rules() -> None:
    rule = render_rule(
        "alerts.oldestReadyJob.thresholdSeconds=60",
        "alerts.oldestReadyJob.for=1m",
        "json:alerts.failureRatio.threshold=0.2",
        "alerts.failureRatio.window=5m",
        "alerts.noLiveWorkers.for=20m",
        "alerts.ruleLabels.team=payments",
        "alerts.operatorJob=monitoring/shoal-operator",
        "alerts.runbookUrl=https://docs.example.com/shoal/alerts",
        "alerts.disabled={ShoalBacklogGrowing}",
    )
    found = alerts(rule)
    assert "ShoalBacklogGrowing" not in found
    assert set(found) == EXPECTED - {"ShoalBacklogGrowing"}
    old = found["ShoalOldestReadyJobTooOld"]
    assert "(shoal_queue_oldest_ready_age_seconds) > 60\n" in old["expr"] and old["for"] == "1m"
    ratio = found["ShoalHighFailureRatio"]
    assert ") > 0.2" in ratio["expr"] and "[5m]" in ratio["expr"] and "[10m]" not in ratio["expr"]
    assert found["ShoalNoLiveWorkers"]["for"] == "20m"
    assert 'up{job="monitoring/shoal-operator"}' in found["ShoalOperatorDown"]["expr"]
    for name, r in found.items():
        assert r["labels"]["team"] == "payments", name
        assert r["annotations"]["runbook_url"] == f"https://docs.example.com/shoal/alerts#{name.lower()}"


def test_default_operator_job_is_the_pod_monitors() -> None:
    """prometheus-operator names a PodMonitor's job "<namespace>/<name>": the rule must match
    the operator PodMonitor the chart renders."""
    expr = alerts(render_rule())["ShoalOperatorDown"]["expr"]
    assert 'up{job="shoal-system/shoal-operator"}' in expr


def test_alerts_off_by_default() -> None:
    values = yaml.safe_load((REPO_ROOT / "charts/shoal/values.yaml").read_text())
    assert values["alerts"]["enabled"] is False
