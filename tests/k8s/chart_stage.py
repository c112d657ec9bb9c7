"""The stage of the chart end-to-end tests: a cluster with the chart installed the way a user
installs it, and the readers those tests use.

Emulated (the default): a Kubernetes emulator of its own (the chart's operator watches every
namespace, so it must not see other tests' leftovers), the process kubelet running the
shoal image from the session's wheel venv, and the session's embedded PostgreSQL.

Real cluster (``SHOAL_E2E_KUBECONFIG``): no kubelet; also needed are ``SHOAL_E2E_IMAGE``
(the shoal image, loaded into the cluster: ``kind load docker-image shoal:dev``) and
``SHOAL_E2E_DATABASE_URL``, a PostgreSQL server URL that both this host and the pods can
reach (the tests create and drop a database of their own on it).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from .conftest import E2E_ENV, REPO, Cluster, EmulatorThread, Kubectl, write_kubeconfig
from .image_venv import shoal_image
from .kubelet import Kubelet, dump

CHART = REPO / "charts" / "shoal"
HOOK = "helm.sh/hook"


def chart_default_image() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return f"{values['image']['repository']}:{chart['appVersion']}"


@dataclass
class Stage:
    kubectl: Kubectl
    kubeconfig: Path
    server_url: str  # PostgreSQL server (no database)
    db_url: str  # this run's database, as this host and the pods reach it
    image: str
    release: str
    namespace: str  # the release's
    apps: str  # the Queue's
    kubelet: Kubelet | None = None
    docs: list[dict[str, Any]] = field(default_factory=list)

    def ns(self, which: str | None = None) -> str:
        return f"--namespace={which or self.apps}"

    def helm_template(self, helm: Path) -> list[dict[str, Any]]:
        repository, _, tag = self.image.rpartition(":")
        out = subprocess.run(
            [str(helm), "template", self.release, str(CHART), "--namespace", self.namespace, "--include-crds",
             "--set", f"database.url={self.db_url}", "--set", f"image.repository={repository}",
             "--set", f"image.tag={tag}", "--set", f"operator.peering.name={self.release}"],
            capture_output=True, text=True, timeout=120, check=True).stdout
        self.docs = [d for d in yaml.safe_load_all(out) if d]
        return self.docs

    def install(self, helm: Path) -> None:
        """What `helm install` does, with kubectl: CRDs, then the pre-install hooks (the
        migration Job) until they succeed and are deleted, then the release's objects."""
        docs = self.helm_template(helm)
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        hooks = sorted((d for d in docs if HOOK in (d["metadata"].get("annotations") or {})),
                       key=lambda d: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0")))
        rest = [d for d in docs if d not in crds and d not in hooks]
        self.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        self.kubectl.apply(crds)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *[f"crd/{d['metadata']['name']}" for d in crds])
        self.kubectl.apply(hooks, self.ns(self.namespace))
        for job in (h for h in hooks if h["kind"] == "Job"):
            self.kubectl("wait", "--for=condition=complete", f"job/{job['metadata']['name']}", "--timeout=180s",
                         self.ns(self.namespace), timeout=200)
        for hook in hooks:  # helm.sh/hook-delete-policy: hook-succeeded
            self.kubectl("delete", hook["kind"].lower(), hook["metadata"]["name"], self.ns(self.namespace),
                         "--wait=true", "--timeout=60s", timeout=90)
        self.kubectl.apply(rest, self.ns(self.namespace))
        self.kubectl("rollout", "status", f"deployment/{self.release}-operator", self.ns(self.namespace),
                     "--timeout=120s", timeout=150)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return list(self.kubectl.json("get", "pods", self.ns(namespace), f"--selector={selector}")["items"])

    def scrape(self, namespace: str, pod: str, port: int) -> str:
        """A pod's /metrics: through its host port here, through the API server's pod proxy
        on a real cluster (``kubectl get --raw``), as Prometheus would reach it."""
        if self.kubelet is not None:
            url = self.kubelet.pod(namespace, pod).url(port, "/metrics")
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (a local URL)
                return str(resp.read().decode())
        return str(self.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics")
                   .stdout)

    def describe(self) -> str:
        return dump(self.kubelet)[-12000:] if self.kubelet is not None else ""


async def _sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def make_stage(session_cluster: Cluster, kubectl_bin: Path, server_url: str, image_venv: Path | None,
               work: Path) -> Iterator[Stage]:
    """Yield a Stage (nothing installed yet); tear everything down afterwards."""
    import asyncio

    real = os.environ.get(E2E_ENV)
    suffix = uuid.uuid4().hex[:6]
    emulated: EmulatorThread | None = None
    kubelet: Kubelet | None = None
    if real:
        server_url = os.environ.get("SHOAL_E2E_DATABASE_URL", "")
        image = os.environ.get("SHOAL_E2E_IMAGE", "")
        if not server_url or not image:
            import pytest

            pytest.skip("on a real cluster set SHOAL_E2E_DATABASE_URL and SHOAL_E2E_IMAGE too")
        kubeconfig = session_cluster.kubeconfig
    else:
        emulated = EmulatorThread()
        api_server = emulated.start()
        kubeconfig = write_kubeconfig(work / "kubeconfig", api_server)
        image = chart_default_image()
    database = f"e2e_{suffix}"
    asyncio.run(_sql(server_url, f'CREATE DATABASE "{database}"'))  # empty: the chart's hook migrates it
    base, _, _ = server_url.rpartition("/")
    kubectl = Kubectl(kubectl_bin, kubeconfig)
    stage = Stage(kubectl, kubeconfig, server_url, f"{base}/{database}", image, f"shoal-{suffix}",
                  f"shoal-{suffix}", f"apps-{suffix}")
    try:
        if emulated is not None:
            assert image_venv is not None
            images = {image: shoal_image(image_venv, work / "app")}
            kubelet = stage.kubelet = Kubelet(api_server, images, work / "kubelet", token="emulator-token",
                                              kubeconfig=kubeconfig).start()
        yield stage
    finally:
        if real:
            stage.kubectl("delete", "queues,cronjobs", "--all", stage.ns(), "--wait=true", "--timeout=60s",
                          check=False)
            for namespace in (stage.apps, stage.namespace):
                stage.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            cluster_scoped = [d for d in stage.docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding",
                                                                      "ClusterKopfPeering")]
            for doc in cluster_scoped:
                stage.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--wait=false", check=False)
        if kubelet is not None:
            (work / "kubelet-dump.txt").write_text(dump(kubelet))
            kubelet.stop()
        if emulated is not None:
            emulated.stop()
        asyncio.run(_sql(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def queue_from_example(stage: Stage) -> list[dict[str, Any]]:
    """examples/queue.yaml, pointed at this run: our database and image, the builtin tasks
    (``shoal.sleep``, ``shoal.noop``: no task image needed), no rate limit (a 20,000-job burst
    at 50/s would take 400 s), and autoscaling that sleeps at zero."""
    secret, queue = yaml.safe_load_all((REPO / "examples" / "queue.yaml").read_text())
    secret["stringData"]["url"] = stage.db_url
    spec = queue["spec"]
    spec["worker"]["image"] = stage.image
    spec["worker"].pop("tasks")
    for key in ("rateLimit", "concurrencyLimit"):
        spec.pop(key)
    spec["autoscaling"] = {"minReplicas": 0, "scaleToZero": True, "maxReplicas": 4,
                           "scaleDownDelaySeconds": 3, "pollIntervalSeconds": 1}
    smtp = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "smtp"}, "stringData": {"password": "pw"}}
    return [secret, smtp, queue]


def write_timeline(path: Path, timeline: dict[str, Any]) -> str:
    text = json.dumps(timeline, indent=1)
    path.write_text(text)
    return text
