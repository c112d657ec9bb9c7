"""The Grafana dashboard (charts/shoal/dashboards/shoal.json) only queries what Shoal exports:
every metric name in its PromQL (histogram _bucket/_sum/_count folded onto the histogram)
and every label in its selectors, by/without/on clauses and legends must be exported by
`shoal.worker.metrics.REGISTRY` or `shoal.operator.metrics.REGISTRY`."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tools import REPO_ROOT

DASHBOARD = REPO_ROOT / "charts" / "shoal" / "dashboards" / "shoal.json"
REGISTRY_MODULES = ("shoal.worker.metrics", "shoal.operator.metrics")

# PromQL words that are not metric names.
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:(.+?)\s*,)?\s*([a-zA-Z_]\w*)\s*\)")
_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass
class Query:
    where: str
    metrics: set[str] = field(default_factory=set)
    # (metric or None, label): None for labels of by/on clauses and legends, which may name
    # a label of any metric in the same query.
    labels: set[tuple[str | None, str]] = field(default_factory=set)


def parse_promql(expr: str, where: str) -> Query:
    q = Query(where)
    text = _STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range vectors and subqueries: [5m], [$__rate_interval]
    for m in _CLAUSE.finditer(text):
        q.labels |= {(None, lbl.strip()) for lbl in m.group(1).split(",") if lbl.strip()}
    text = _CLAUSE.sub(" ", text)
    for m in _SELECTOR.finditer(text):
        metric = m.group(1)
        if metric and metric not in KEYWORDS:
            q.metrics.add(metric)
        q.labels |= {(metric, lbl) for lbl in _MATCHER.findall(m.group(2))}
    text = _SELECTOR.sub(" ", text)
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS:
            continue  # a function (rate, histogram_quantile, ...) or a keyword
        q.metrics.add(name)
    return q


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[Query]:
    dash = dashboard()
    queries: list[Query] = []
    for panel in walk_panels(dash["panels"]):
        for target in panel.get("targets", []):
            if not target.get("expr"):
                continue
            where = f"panel {panel.get('title')!r} target {target.get('refId')}"
            q = parse_promql(target["expr"], where)
            q.labels |= {(None, lbl) for lbl in _LEGEND_LABEL.findall(target.get("legendFormat", ""))}
            queries.append(q)
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        raw = var.get("query")
        text = raw.get("query", "") if isinstance(raw, dict) else str(raw or "")
        where = f"variable ${var['name']}"
        m = _LABEL_VALUES.fullmatch(text.strip())
        if m:
            q = parse_promql(m.group(1), where) if m.group(1) else Query(where)
            q.labels.add((None, m.group(2)))
        else:
            q = parse_promql(text, where)
        queries.append(q)
    return queries


def exported(registry: Any) -> dict[str, set[str]]:
    """{sample or family name: its label names} for everything a registry exports.

    Names come from registry.collect(). A labelled metric that has not been observed yet
    yields no samples, so its label names are taken from the metric object itself
    (prometheus_client keeps them in `_labelnames`).
    """
    declared: dict[str, set[str]] = {}
    for collector in list(getattr(registry, "_collector_to_names", {})):
        name = getattr(collector, "_name", None)
        if name is not None:
            declared[name] = set(getattr(collector, "_labelnames", ()))
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = set(declared.get(family.name, set()))
        for sample in family.samples:
            labels |= set(sample.labels)
        names = {family.name}
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            labels.add("le")
            names |= {f"{family.name}{s}" for s in (*_SUFFIXES, "_created")}
        elif family.type == "summary":
            labels.add("quantile")
            names |= {f"{family.name}{s}" for s in ("_sum", "_count", "_created")}
        names |= {s.name for s in family.samples}
        for name in names:
            out.setdefault(name, set()).update(labels)
    return out


def normalize(metric: str) -> str:
    for suffix in _SUFFIXES:
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


def check(queries: list[Query], catalogue: dict[str, set[str]]) -> list[str]:
    """Every problem found: unknown metrics, and labels no queried metric exports."""
    problems: list[str] = []
    for q in queries:
        known = {}
        for metric in sorted(q.metrics):
            name = metric if metric in catalogue else normalize(metric)
            if name not in catalogue:
                problems.append(f"{q.where}: metric {metric} is not exported by Shoal")
            else:
                known[metric] = catalogue[name]
        all_labels = set().union(*known.values()) if known else set()
        for metric, label in sorted(q.labels, key=lambda ml: (ml[0] or "", ml[1])):
            pool = known.get(metric, set()) if metric else all_labels
            if (metric and metric not in known) or not known:
                continue  # already reported as an unknown metric
            if label not in pool:
                scope = f"metric {metric}" if metric else f"metrics {sorted(known)}"
                problems.append(f"{q.where}: label {label!r} is not exported by {scope}")
    return problems


# Labels Prometheus attaches to every scraped series (the PodMonitors' target labels).
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "endpoint"}
# Series Prometheus makes itself: ALERTS of the chart's rules (charts/shoal/files/alerts.yaml),
# which group by namespace and queue and set severity.
PROMETHEUS_SERIES = {"ALERTS": {"alertname", "alertstate", "severity", "namespace", "queue"}}


def shoal_catalogue() -> dict[str, set[str]]:
    """What the dashboard may query: Shoal's series with their scrape labels, and ALERTS."""
    catalogue: dict[str, set[str]] = {name: set(labels) for name, labels in PROMETHEUS_SERIES.items()}
    for module_name in REGISTRY_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            pytest.fail(f"{module_name} is not importable ({exc}); the dashboard test needs its REGISTRY")
        registry = getattr(module, "REGISTRY", None)
        assert registry is not None, f"{module_name} has no REGISTRY"
        for name, labels in exported(registry).items():
            catalogue.setdefault(name, set()).update(labels | TARGET_LABELS)
    return catalogue


# --------------------------------------------------------------------------- tests


def test_dashboard_queries_only_exported_metrics_and_labels() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15, "the parser found too few queries; did the dashboard's layout change?"
    problems = check(queries, shoal_catalogue())
    assert not problems, "\n".join(problems)


def test_promql_parser() -> None:
    """The parser the test above relies on, on the shapes the dashboard uses."""
    q = parse_promql(
        'histogram_quantile(0.95, sum by (queue, le) (rate(shoal_job_duration_seconds_bucket{queue=~"$queue",'
        ' task!="x"}[$__rate_interval]))) / clamp_min(sum(rate(foo_total[5m])) without (pod), 1e-9)'
        " + on (queue) group_left (task) max by (queue) (bar) and bool baz offset 5m",
        "t",
    )
    assert q.metrics == {"shoal_job_duration_seconds_bucket", "foo_total", "bar", "baz"}
    assert q.labels == {
        (None, "queue"),
        (None, "le"),
        (None, "pod"),
        (None, "task"),
        ("shoal_job_duration_seconds_bucket", "queue"),
        ("shoal_job_duration_seconds_bucket", "task"),
    }
    catalogue = {
        "shoal_job_duration_seconds": {"queue", "task", "le"},
        "foo_total": {"queue", "pod"},
        "bar": {"queue"},
        "baz": set(),
    }
    assert check([q], catalogue) == []
    catalogue["foo_total"] = set()
    catalogue.pop("baz")
    catalogue["shoal_job_duration_seconds"] = {"queue", "le"}
    problems = check([q], catalogue)
    assert "t: metric baz is not exported by Shoal" in problems
    assert any(
        "label 'task' is not exported by metric shoal_job_duration_seconds_bucket" in p for p in problems
    )
    assert any("label 'pod'" in p for p in problems)


def test_dashboard_structure() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["queue"]["type"] == "query" and variables["queue"]["multi"] is True
    ns = variables["namespace"]
    assert ns["type"] == "query" and ns["multi"] is True and ns["includeAll"] is True
    assert ns["query"]["query"].startswith("label_values(") and ns["query"]["query"].endswith(", namespace)")
    # "All" must also match series without a namespace label (workers outside Kubernetes).
    assert ns["allValue"] == ".*"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names.index("namespace") < names.index("queue"), "the queue list depends on $namespace"
    assert "$namespace" in variables["queue"]["query"]["query"]
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in walk_panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = []
    for panel in walk_panels(dash["panels"]):
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), f"{panel['title']}: gridPos {pos}"
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every series is filtered by the queue variable (alerts: or has no queue, like
            # the operator's) and by the namespace variable.
            expr = target["expr"]
            assert 'queue=~"$queue"' in expr or 'queue=~"$queue|"' in expr, f"{panel['title']}: not filtered by $queue"
            assert "$namespace" in expr, f"{panel['title']}: not filtered by $namespace"
            exprs.append(expr)
    joined = "\n".join(exprs)
    # What the issue asks the dashboard to show, per queue.
    for needle in (
        "shoal_queue_pending",
        "shoal_queue_running",
        "shoal_jobs_succeeded_total",
        "shoal_jobs_failed_total",
        "shoal_jobs_retried_total",
        "shoal_job_queue_wait_seconds_bucket",
        "shoal_queue_desired_replicas",
        "shoal_queue_current_replicas",
        "shoal_scale_events_total",
        "shoal_rate_limited_claims_total",
        "shoal_queue_oldest_ready_age_seconds",
        "shoal_queue_live_workers",
        'ALERTS{alertstate="firing", alertname=~"Shoal.+"',
    ):
        assert needle in joined, f"the dashboard does not show {needle}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (queue, le) (rate(shoal_job_duration_seconds_bucket"
            in joined
        ), f"no job duration p{quantile}"


def test_namespace_filters() -> None:
    """Worker series are filtered by their pods' namespace label; the operator's per-queue series
    (scraped in the operator's namespace) by their queue name, "<namespace>.<name>" for a Queue."""
    operator_metrics = {n for n, labels in exported(importlib.import_module("shoal.operator.metrics").REGISTRY).items()
                        if "queue" in labels}
    for q, expr in ((q, e) for q, e in _exprs()):
        parsed = parse_promql(expr, q)
        if parsed.metrics & operator_metrics or "ALERTS" in parsed.metrics:
            assert 'queue=~"($namespace)\\\\..+|[^.]' in expr, f"{q}: filter operator series by the namespace in their queue name"
            assert 'namespace=~"$namespace"' not in expr, q
        else:
            assert 'namespace=~"$namespace"' in expr, q


def _exprs() -> Iterator[tuple[str, str]]:
    for panel in walk_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            yield f"{panel['title']} {target['refId']}", target["expr"]
