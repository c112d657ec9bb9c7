"""A scale-down spares the busy pod: the real operator, real worker pods, a real PostgreSQL.

Four worker pods; one runs a 20 s `shoal.sleep` job (which one is read from
``shoal.jobs.worker_id``, ``<pod>-<pid>-<random>``). Lowering the Queue's
``autoscaling.minReplicas`` from 4 to 1 makes its autoscaler scale 4 → 1 (minReplicas ==
maxReplicas would be "autoscaling off", so min=max=4 only sets the starting count); just
before that the operator gives each worker pod its running jobs as
``controller.kubernetes.io/pod-deletion-cost`` (operator/deletion_cost.py), and the
ReplicaSet deletes the cheapest pods. The busy pod must be the one left, its job must
succeed, and run once: the drain (5 s) is shorter than the job, so a deleted busy pod would
have released it and another pod would have run it again (attempts 2, a new started_at).

Before the scale-down the test writes the opposite costs on the pods (busy -1000, idle
1000), as a stale annotation could be: without the operator's fresh costs the busy pod
would go first, so its survival is the operator's doing and not the ReplicaSet's default
order (ready for less time, then newer), which spares it by chance one time in four. A
watch records every pod's annotation, so the costs the deleted pods had are observed.

Emulated: the process kubelet (kubelet.py) runs the pods from the image's venv
(image_venv.py) on the session's PostgreSQL. Real cluster (``SHOAL_E2E_KUBECONFIG``): the
cluster's kubelets and ReplicaSet controller, with ``SHOAL_E2E_IMAGE`` (the shoal image,
loaded into the cluster) and ``SHOAL_E2E_DATABASE_URL`` (a server that this host and the pods
reach; a database of the test's own is created on it), as in chart_stage.py. The operator
runs on this host either way. Every wait is a hang guard on an observable outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes
import pytest

from helpers import counter, eventually
from shoal.manage import job_history

from .conftest import Cluster, Kubectl, OperatorProcess
from .image_venv import shoal_image
from .kubelet import Kubelet, dump
from .operator_runner import logs, start_operator

pytestmark = pytest.mark.slow

QUEUE = "busy"
WORKERS = f"{QUEUE}-workers"
SELECTOR = f"shoal.dev/queue={QUEUE}"
COST = "controller.kubernetes.io/pod-deletion-cost"
REPLICAS = 4
JOB_SECONDS = 20
DRAIN_SECONDS = 5  # < JOB_SECONDS: a deleted busy pod would give its job back before it ends
METRICS_PORT = 9090
EMULATED_IMAGE = "shoal:busy-pod-test"


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database(request: pytest.FixtureRequest, k8s_cluster: Cluster) -> Iterator[str]:
    """A migrated database of this test's own, on a server the worker pods reach."""
    name = "busy_" + uuid.uuid4().hex[:10]
    if k8s_cluster.emulated is None:
        server = os.environ.get("SHOAL_E2E_DATABASE_URL", "")
        if not server or not os.environ.get("SHOAL_E2E_IMAGE"):
            pytest.skip("on a real cluster set SHOAL_E2E_DATABASE_URL and SHOAL_E2E_IMAGE too")
        asyncio.run(_execute(server, f'CREATE DATABASE "{name}"'))
        from shoal.migrate import migrate

        asyncio.run(migrate(f"{server.rpartition('/')[0]}/{name}"))
    else:
        server = request.getfixturevalue("server_url")
        template = request.getfixturevalue("template_db")
        asyncio.run(_execute(server, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield f"{server.rpartition('/')[0]}/{name}"
    asyncio.run(_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def worker_image(request: pytest.FixtureRequest, k8s_cluster: Cluster, namespace: str,
                 tmp_path: Path) -> tuple[str, Kubelet | None]:
    """The image the worker pods run, and the process kubelet running them (None: a real cluster's)."""
    if k8s_cluster.emulated is None:
        if not os.environ.get("SHOAL_E2E_IMAGE"):
            pytest.skip("on a real cluster set SHOAL_E2E_IMAGE (the shoal image, loaded into the cluster)")
        return os.environ["SHOAL_E2E_IMAGE"], None
    kubelet: Kubelet = request.getfixturevalue("process_kubelet")
    kubelet.images[EMULATED_IMAGE] = shoal_image(request.getfixturevalue("image_venv"), tmp_path / "app")
    kubelet.namespaces.add(namespace)  # type: ignore[union-attr]
    return EMULATED_IMAGE, kubelet


@pytest.fixture
def operator(kubectl: Kubectl, kubeconfig: Path, crds_installed: list[str], namespace: str, database: str,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    op = start_operator(kubeconfig, tmp_path, ["--standalone", "--namespace", namespace], label="busy")
    yield op
    # The Queue goes while its operator can still remove the finalizer (and its Deployment).
    kubectl("delete", "queue", QUEUE, f"--namespace={namespace}", "--ignore-not-found", "--wait=true",
            "--timeout=30s", check=False, timeout=45)
    op.stop()


class PodWatch(threading.Thread):
    """Every pod-deletion-cost each worker pod had, in order, and the one it had when it was
    deleted (its first event with a deletionTimestamp): a watch of the namespace's pods."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        super().__init__(name="pod-watch", daemon=True)
        self.core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kubeconfig)))
        self.namespace = namespace
        self.costs: dict[str, list[str | None]] = {}
        self.deleted_with: dict[str, str | None] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def run(self) -> None:
        version = None
        while not self.done.is_set():
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(self.core.list_namespaced_pod, self.namespace, label_selector=SELECTOR,
                                          resource_version=version, timeout_seconds=2, _request_timeout=10):
                    pod = event["raw_object"]
                    version = pod["metadata"].get("resourceVersion", version)
                    self._see(pod)
                    if self.done.is_set():
                        break
            except Exception as exc:  # a dropped or expired watch: list again from now
                self.errors.append(f"{type(exc).__name__}: {exc}")
                version = None
            finally:
                watch.stop()

    def _see(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        cost = (meta.get("annotations") or {}).get(COST)
        with self.lock:
            seen = self.costs.setdefault(meta["name"], [])
            if not seen or seen[-1] != cost:
                seen.append(cost)
            if meta.get("deletionTimestamp") and meta["name"] not in self.deleted_with:
                self.deleted_with[meta["name"]] = cost

    def snapshot(self) -> tuple[dict[str, list[str | None]], dict[str, str | None]]:
        with self.lock:
            return {k: list(v) for k, v in self.costs.items()}, dict(self.deleted_with)

    def stop(self) -> None:
        self.done.set()
        self.join(15)


async def test_a_scale_down_keeps_the_busy_pod_and_its_job_runs_once(
        kubectl: Kubectl, kubeconfig: Path, namespace: str, database: str,
        worker_image: tuple[str, Kubelet | None], operator: OperatorProcess) -> None:
    image, kubelet = worker_image
    ns = f"--namespace={namespace}"
    pg_queue = f"{namespace}.{QUEUE}"

    def describe() -> str:
        return f"\n{logs(operator)}\n" + (dump(kubelet)[-6000:] if kubelet is not None else "")

    async def until(check: Any, timeout: float) -> Any:
        async def probe() -> Any:
            assert operator.proc.poll() is None, f"operator exited:{describe()}"
            result = check()
            return await result if asyncio.iscoroutine(result) else result

        try:
            return await eventually(probe, timeout=timeout, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{describe()}") from None

    def pods() -> list[dict[str, Any]]:
        return list(kubectl.json("get", "pods", ns, f"--selector={SELECTOR}")["items"])

    def live_pods() -> set[str]:
        return {p["metadata"]["name"] for p in pods() if not p["metadata"].get("deletionTimestamp")}

    def deployment() -> dict[str, Any]:
        return dict(kubectl.json("get", "deployment", WORKERS, ns))

    def scrape(pod: str) -> str:
        if kubelet is not None:
            with urllib.request.urlopen(kubelet.pod(namespace, pod).url(METRICS_PORT, "/metrics"),  # noqa: S310
                                        timeout=10) as resp:
                return str(resp.read().decode())
        return str(kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:{METRICS_PORT}"
                                           "/proxy/metrics").stdout)

    kubectl.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": database}},
        {"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": QUEUE}, "spec": {
            "databaseSecretRef": {"name": "db"}, "concurrency": 2,
            "retention": {"succeededSeconds": 3600},  # keep the finished job's row to read it
            "worker": {"image": image, "imagePullPolicy": "IfNotPresent", "drainTimeoutSeconds": DRAIN_SECONDS},
            # min == max: autoscaling off, the Deployment starts with 4 and is left alone.
            "autoscaling": {"minReplicas": REPLICAS, "maxReplicas": REPLICAS, "scaleDownDelaySeconds": 0,
                            "pollIntervalSeconds": 0.5}}}], ns)

    conn = await asyncpg.connect(database)
    watch = PodWatch(kubeconfig, namespace)
    try:
        # Four ready pods, each with its worker registered (the operator finds pods by worker id).
        def ready() -> bool:
            found = kubectl("get", "deployment", WORKERS, ns, "-o", "json", check=False)
            return found.returncode == 0 and json.loads(found.stdout).get("status", {}).get("readyReplicas") == REPLICAS

        await until(ready, timeout=90)
        names = live_pods()
        assert len(names) == REPLICAS, names

        async def registered() -> bool:
            ids = await conn.fetch("SELECT id FROM shoal.workers WHERE queue = $1 AND heartbeat_at > now() - "
                                   "interval '30 seconds'", pg_queue)
            return {n for n in names if any(r["id"].startswith(f"{n}-") for r in ids)} == names

        await until(registered, timeout=30)
        watch.start()

        job_id = await conn.fetchval("SELECT shoal.enqueue($1, 'shoal.sleep', $2::jsonb)", pg_queue,
                                     json.dumps({"seconds": JOB_SECONDS}))
        running = await until(lambda: conn.fetchrow(
            "SELECT worker_id, started_at, attempts FROM shoal.jobs WHERE id = $1 AND state = 'running' "
            "AND worker_id IS NOT NULL", job_id), timeout=30)
        worker_id = running["worker_id"]
        (busy,) = [n for n in names if re.fullmatch(rf"{re.escape(n)}-\d+-[0-9a-z]+", worker_id)]
        idle = names - {busy}
        if kubelet is not None:  # the worker id carries the pod's name and the worker's pid
            assert worker_id.split("-")[-2] == str(kubelet.pod(namespace, busy).pids[0])

        # The opposite of the right costs: only the operator's fresh ones can save the busy pod.
        for name in names:
            kubectl("annotate", "pod", name, ns, "--overwrite", f"{COST}={'-1000' if name == busy else '1000'}")
        await until(lambda: all((watch.snapshot()[0].get(n) or [None])[-1] in ("-1000", "1000") for n in names),
                    timeout=15)

        kubectl("patch", "queue", QUEUE, ns, "--type=merge", "-p",
                json.dumps({"spec": {"autoscaling": {"minReplicas": 1}}}))
        await until(lambda: deployment()["spec"]["replicas"] == 1, timeout=20)

        def settled() -> dict[str, Any] | None:  # three pods deleted, drained and gone
            items = pods()
            return items[0] if len(items) == 1 and not items[0]["metadata"].get("deletionTimestamp") else None

        left = await until(settled, timeout=30)
        costs, deleted_with = watch.snapshot()
        assert left["metadata"]["name"] == busy, \
            f"the busy pod {busy} was deleted and {left['metadata']['name']} kept; costs seen: {costs}"
        assert left["status"]["phase"] == "Running" and left["metadata"]["annotations"][COST] == "1"  # 1 running job
        assert busy not in deleted_with, (busy, deleted_with)
        assert deleted_with == dict.fromkeys(idle, "0"), (deleted_with, costs)  # rewritten before deletion
        assert costs[busy][-2:] == ["-1000", "1"], costs
        status = kubectl.json("get", "queue", QUEUE, ns)["status"]
        assert status["lastScaleReason"].startswith("scale down 4→1:"), status

        # The job finishes where it started, once.
        await until(lambda: conn.fetchval("SELECT state = 'succeeded' FROM shoal.jobs WHERE id = $1", job_id),
                    timeout=JOB_SECONDS + 30)
        row = await conn.fetchrow("SELECT attempts, worker_id, started_at FROM shoal.jobs WHERE id = $1", job_id)
        assert (row["attempts"], row["worker_id"], row["started_at"]) == (1, worker_id, running["started_at"]), \
            (dict(row), dict(running))
        assert await job_history(conn, job_id) == []  # no failed or interrupted attempt
        text = scrape(busy)
        for metric in ("shoal_jobs_claimed_total", "shoal_jobs_succeeded_total"):
            assert counter(text, metric, queue=pg_queue, task="shoal.sleep") == 1, (metric, text)
        assert {p["metadata"]["name"] for p in pods()} == {busy}
        assert "without pod-deletion costs" not in operator.log and "pod-deletion-cost patches failed" \
            not in operator.log
    finally:
        watch.stop()
        await conn.close()
