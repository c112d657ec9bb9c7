"""The chart's alerting rules as Prometheus sees them, for test_alerts.py and test_prometheus_live.py.

The rules have one source, charts/shoal/files/alerts.yaml, a Helm template of a Prometheus
rules file. `render_rule` renders the chart's PrometheusRule with the real helm and
`write_rules_file` writes its ``spec.groups`` as a rules file: exactly what the chart installs
is what promtool and the live Prometheus load.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tools import REPO_ROOT, helm

CHART = REPO_ROOT / "charts" / "shoal"
RULES_SOURCE = CHART / "files" / "alerts.yaml"
NAMESPACE = "shoal-system"
RELEASE = "shoal"
PROMTOOL_DEFAULT = Path("/usr/bin/promtool")
PROMETHEUS_DEFAULT = Path("/usr/bin/prometheus")


def binary(name: str, default: Path) -> Path | None:
    """The Prometheus tool ``name`` (scripts/setup.sh installs Debian's), or None."""
    found = shutil.which(name)
    if found:
        return Path(found)
    return default if default.exists() else None


def render_rule(*sets: str) -> dict[str, Any]:
    """The PrometheusRule the chart renders with alerts.enabled=true and the given --set values
    ("json:key=value" for --set-json: helm's --set reads 0.2 as a string)."""
    args = [str(helm()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--show-only", "templates/prometheusrule.yaml", "--set", "alerts.enabled=true"]
    for s in sets:
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(docs) == 1, docs
    return docs[0]


def write_rules_file(rule: dict[str, Any], path: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rules file at ``path``."""
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{alert name: rule} over every group."""
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
