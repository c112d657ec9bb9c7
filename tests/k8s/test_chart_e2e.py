"""End to end from the user's commands: `helm template` of the chart applied with kubectl,
the operator running from the chart's own Deployment, a Queue like examples/queue.yaml on a
real PostgreSQL, a burst of 20,000 jobs, and a CronJob.

On the emulator the process kubelet (kubelet.py) runs every pod, the operator's and the
workers', as local processes of the image built from the Dockerfile (image_venv.py). With
``SHOAL_E2E_KUBECONFIG`` (and SHOAL_E2E_IMAGE, SHOAL_E2E_DATABASE_URL: chart_stage.py) the
same tests run against a real cluster. Every wait is a hang guard on an observable outcome,
never a timing assertion; the burst's timeline is measured and reported (``-s`` prints it;
it is also written to burst-timeline.json in the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes
import pytest

from helpers import counter, eventually
from shoal.client import NewJob, enqueue_many
from tools import helm

from .chart_stage import Stage, make_stage, queue_from_example, write_timeline
from .conftest import E2E_ENV

pytestmark = pytest.mark.slow

JOBS = 20_000
JOB_SECONDS = 0.05
MAX_REPLICAS = 4
METRICS_PORT = 9090
WORKERS = "emails-workers"


@pytest.fixture(scope="module")
def stage(request: pytest.FixtureRequest, kubectl_bin: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stage]:
    real = bool(os.environ.get(E2E_ENV))
    cluster = request.getfixturevalue("k8s_cluster") if real else None
    server_url = "" if real else request.getfixturevalue("server_url")
    venv = None if real else request.getfixturevalue("image_venv")
    yield from make_stage(cluster, kubectl_bin, server_url, venv, tmp_path_factory.mktemp("chart"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def installed(stage: Stage) -> Stage:
    stage.install(helm())
    return stage


@pytest.fixture(scope="module")
def queue(installed: Stage) -> Stage:
    """The example Queue in a namespace of its own, declared in Postgres by the operator."""
    stage = installed
    stage.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": stage.apps}})
    stage.kubectl.apply(queue_from_example(stage), stage.ns())

    def declared() -> bool:
        status = stage.kubectl.json("get", "queue", "emails", stage.ns()).get("status") or {}
        return status.get("queueName") == f"{stage.apps}.emails" and status.get("replicas") == 0

    asyncio.run(eventually(_async(declared), timeout=60, interval=0.2))
    return stage


def _any(value: Any) -> Any:
    return value


def _async(fn: Any) -> Any:
    async def check() -> Any:
        return fn()
    return check


async def db_value(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_the_chart_installs_migrates_and_runs_its_operator(installed: Stage) -> None:
    stage = installed
    assert await db_value(stage.db_url, "SELECT to_regclass('shoal.jobs')::text") == "shoal.jobs"  # the hook ran
    ns = stage.ns(stage.namespace)
    assert not stage.kubectl.json("get", "jobs", ns)["items"]  # hook-delete-policy: hook-succeeded
    deployment = next(d for d in stage.docs if d["kind"] == "Deployment")
    rendered = deployment["spec"]["template"]["spec"]["containers"][0]
    operators = stage.pods(stage.namespace, "app.kubernetes.io/component=operator")
    assert len(operators) == deployment["spec"]["replicas"]
    for pod in operators:
        assert pod["status"]["phase"] == "Running"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        text = stage.scrape(stage.namespace, pod["metadata"]["name"], METRICS_PORT)
        assert "# TYPE shoal_queue_pending gauge" in text
        if stage.kubelet is not None:  # the process runs exactly what the chart renders
            info = stage.kubelet.pod(stage.namespace, pod["metadata"]["name"])
            assert info.argv[0].endswith("/bin/shoal") and info.argv[1:len(rendered["args"]) + 1] == \
                tuple(rendered["args"])
            assert info.env["POD_NAME"] == pod["metadata"]["name"] and info.env["SHOAL_DATABASE_URL"] == stage.db_url
            assert info.env["HOME"] == info.env["TMPDIR"] == str(info.dir / "volumes" / "tmp")
    # kopf peering: every replica records itself in the chart's ClusterKopfPeering (one is active).
    def peers() -> bool:
        status = stage.kubectl.json("get", "clusterkopfpeering", stage.release).get("status") or {}
        return len(status) == len(operators)

    await eventually(_async(peers), timeout=30, interval=0.5)


async def test_a_burst_scales_up_drains_and_sleeps_at_zero(queue: Stage, tmp_path: Path) -> None:
    stage = queue
    api = kubernetes.config.new_client_from_config(str(stage.kubeconfig))
    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    pg_queue, selector = f"{stage.apps}.emails", "shoal.dev/queue=emails"
    marks: dict[str, float] = {}
    notes: dict[str, Any] = {}

    conn = await asyncpg.connect(stage.db_url)
    try:
        t0 = time.monotonic()
        await enqueue_many(conn, [NewJob(pg_queue, "shoal.sleep", {"seconds": JOB_SECONDS})] * JOBS)
        marks["enqueued"] = round(time.monotonic() - t0, 2)

        async def scrape_workers() -> dict[str, float]:
            counts = {}
            pod: Any
            for pod in core.list_namespaced_pod(stage.apps, label_selector=selector).items:
                if pod.metadata.deletion_timestamp is None and pod.status.phase == "Running":
                    text = stage.scrape(stage.apps, pod.metadata.name, METRICS_PORT)
                    counts[pod.metadata.name] = counter(text, "shoal_jobs_succeeded_total", queue=pg_queue)
            return counts

        deadline = time.monotonic() + 240
        while "pods_gone" not in marks:
            assert time.monotonic() < deadline, f"burst stuck: {marks}\n{stage.describe()}"
            dep: Any = apps.read_namespaced_deployment(WORKERS, stage.apps)
            replicas, ready = dep.spec.replicas or 0, dep.status.ready_replicas or 0
            done = await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND state = 'succeeded'",
                                       pg_queue)
            now = round(time.monotonic() - t0, 2)
            conditions = {
                "first_scale": replicas > 0, "max_replicas": replicas == MAX_REPLICAS, "first_ready": ready > 0,
                "all_ready": ready == MAX_REPLICAS, "drained": done == JOBS,
                "scale_down": "max_replicas" in marks and replicas < MAX_REPLICAS,
                "zero": "drained" in marks and replicas == 0,
                "pods_gone": "zero" in marks and not core.list_namespaced_pod(stage.apps,
                                                                              label_selector=selector).items}
            for name, met in conditions.items():
                if met and name not in marks:
                    marks[name] = now
                    if name == "all_ready":
                        row = stage.kubectl("get", "queues", stage.ns()).stdout.splitlines()
                        notes["kubectl get queues"] = row
                        notes["scraped_at_all_ready"] = await scrape_workers()
                    if name == "drained":  # each job ran once, on some pod: the pods' counters add up
                        notes["succeeded_per_pod"] = await eventually(
                            lambda: _sum_is(scrape_workers, JOBS), timeout=10, interval=0.2)
            await asyncio.sleep(0.1)
    finally:
        await conn.close()

    timeline = {"jobs": JOBS, "job_seconds": JOB_SECONDS, "maxReplicas": MAX_REPLICAS,
                "seconds_since_enqueue_start": marks, **notes}
    print("\nburst timeline:\n" + write_timeline(tmp_path / "burst-timeline.json", timeline))
    order = ["first_scale", "max_replicas", "all_ready", "drained", "scale_down", "zero", "pods_gone"]
    assert [m for m in sorted(marks, key=marks.__getitem__) if m in order] == order, marks
    # The printer columns the chart's CRD declares: priority 0 by default, all of them with -o wide.
    columns = next(d for d in stage.docs if d["kind"] == "CustomResourceDefinition"
                   and d["metadata"]["name"] == "queues.shoal.dev")["spec"]["versions"][0]["additionalPrinterColumns"]
    (top,) = _table(notes["kubectl get queues"])
    assert list(top) == ["NAME", *[c["name"].upper() for c in columns if not c.get("priority")]]
    assert top["NAME"] == "emails" and top["REPLICAS"] == str(MAX_REPLICAS)
    assert len(notes["scraped_at_all_ready"]) == MAX_REPLICAS
    status = stage.kubectl.json("get", "queue", "emails", stage.ns())["status"]
    assert status["replicas"] == 0 and status["lastScaleReason"].startswith("scale to zero")
    # The operators' /metrics count the scale events (on the active replica; the standby has none).
    texts = [stage.scrape(stage.namespace, p["metadata"]["name"], METRICS_PORT)
             for p in stage.pods(stage.namespace, "app.kubernetes.io/component=operator")]
    for direction in ("up", "down"):
        assert sum(counter(t, "shoal_scale_events_total", queue=pg_queue, direction=direction) for t in texts) >= 1
    (wide,) = _table(stage.kubectl("get", "queues", stage.ns(), "-o", "wide").stdout.splitlines())
    assert list(wide) == ["NAME", *[c["name"].upper() for c in columns]]
    assert wide["REPLICAS"] == "0"


def _table(lines: list[str]) -> list[dict[str, str]]:
    """kubectl's table output as dicts, cut at the header's column offsets (cells may be empty)."""
    header, *rows = lines
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [{n: row[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)} for row in rows]


async def _sum_is(scrape: Any, total: int) -> dict[str, float] | None:
    counts: dict[str, float] = await scrape()
    return counts if sum(counts.values()) == total else None


async def test_a_cronjob_fires_into_the_queue_and_a_pod_runs_it(queue: Stage) -> None:
    stage = queue
    pg_queue = f"{stage.apps}.emails"
    stage.kubectl.apply({"apiVersion": "shoal.dev/v1alpha1", "kind": "CronJob", "metadata": {"name": "digest"},
                         "spec": {"schedule": "* * * * * *", "queueRef": {"name": "emails"}, "task": "shoal.noop",
                                  "payload": {"audience": "subscribers"}}}, stage.ns())

    async def ran() -> Any:
        return await db_value(stage.db_url, "SELECT count(*) FROM shoal.jobs WHERE queue = $1 AND task = 'shoal.noop'"
                                            " AND state = 'succeeded'", pg_queue)

    try:
        await eventually(ran, timeout=90, interval=0.3)

        async def pod_counts() -> dict[str, float] | None:
            counts = {}
            for pod in stage.pods(stage.apps, "shoal.dev/queue=emails"):
                if pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
                    text = stage.scrape(stage.apps, pod["metadata"]["name"], METRICS_PORT)
                    counts[pod["metadata"]["name"]] = counter(text, "shoal_jobs_succeeded_total", queue=pg_queue,
                                                              task="shoal.noop")
            return counts if sum(counts.values()) >= 1 else None

        assert await eventually(pod_counts, timeout=30, interval=0.3)  # a worker pod ran it
        cron = stage.kubectl.json("get", "cronjobs.shoal.dev", "digest", stage.ns())
        assert cron["status"]["lastScheduleTime"].endswith("Z")
    finally:
        stage.kubectl("delete", "cronjobs.shoal.dev", "digest", stage.ns(), "--wait=false")
    scale = kubernetes.client.AppsV1Api(kubernetes.config.new_client_from_config(str(stage.kubeconfig)))
    await eventually(_async(lambda: _any(scale.read_namespaced_deployment_scale(WORKERS, stage.apps)).spec.replicas == 0),
                     timeout=90, interval=0.5)
