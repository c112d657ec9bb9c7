"""The process kubelet (kubelet.py) on the emulator: pods from Deployments and Jobs run as
local processes of a small test image (kubelet_app.py behind a Dockerfile), driven and
observed only through kubectl and the pods' own files. Emulator only: a real cluster has
its own kubelets."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import E2E_ENV, Kubectl, wait_for
from .kubelet import Kubelet, dump
from .kubelet_image import Image, parse_dockerfile

HERE = Path(__file__).resolve().parent
APP_DOCKERFILE = """
FROM python:3.11-slim
ENV HOME=/tmp TMPDIR=/tmp \\
    PATH=/opt/py/bin:$PATH
COPY kubelet_app.py /srv/
WORKDIR /srv
ENTRYPOINT ["python", "-u", "/srv/kubelet_app.py"]
CMD ["--port", "8000"]
"""
APP = "example.org/app:1"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(os.environ.get(E2E_ENV)),
                                                    reason="a real cluster runs its own kubelets")]


@pytest.fixture
def kubelet(process_kubelet: Kubelet, namespace: str) -> Kubelet:
    process_kubelet.images[APP] = Image(parse_dockerfile(APP_DOCKERFILE),
                                        {"/opt/py": Path(sys.executable).parent.parent, "/srv": HERE},
                                        {"http": "--port"})
    process_kubelet.namespaces.add(namespace)  # type: ignore[union-attr]
    return process_kubelet


def deployment(name: str, replicas: int, *, grace: int = 1, **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "app", "image": APP, "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec.update(container)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {"note": "hi"}},
                                  "spec": {"terminationGracePeriodSeconds": grace, "containers": [spec],
                                           "volumes": [{"name": "tmp", "emptyDir": {}}]}}}}


def until(kubelet: Kubelet, predicate: Any, timeout: float = 30) -> Any:
    return wait_for(predicate, timeout=timeout, describe=lambda: dump(kubelet)[-6000:])


def pods(kubectl: Kubectl, ns: str, app: str) -> list[dict[str, Any]]:
    return list(kubectl.json("get", "pods", f"--namespace={ns}", f"--selector=app={app}")["items"])


def ready_replicas(kubectl: Kubectl, ns: str, name: str) -> int:
    return int(kubectl.json("get", "deployment", name, f"--namespace={ns}").get("status", {}).get("readyReplicas", 0))


def tmp_of(kubelet: Kubelet, ns: str, pod: str) -> Path:
    return kubelet.seen[(ns, pod)].dir / "volumes" / "tmp"


def test_deployment_pods_get_env_ports_probes_and_status(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"color": "blue", "size": "9"}},
    ], ns)
    kubectl.apply(deployment(
        "web", 2, args=["--port", "8000", "--say", "$(GREETING)"],
        envFrom=[{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "gone", "optional": True}}],
        env=[{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "color"}}},
             {"name": "GREETING", "value": "hi-$(COLOR)"},
             {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
             {"name": "READY_AFTER", "value": "1"}]), ns)
    until(kubelet, lambda: ready_replicas(kubectl, namespace, "web") == 2)

    dep = kubectl.json("get", "deployment", "web", ns)
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"]
    assert (dep["status"]["replicas"], dep["status"]["updatedReplicas"], dep["status"]["availableReplicas"]) == (2, 2, 2)
    items = pods(kubectl, namespace, "web")
    assert len(items) == 2
    rs = kubectl.json("get", "replicasets", ns)["items"]
    assert [r["metadata"]["ownerReferences"][0]["uid"] for r in rs] == [dep["metadata"]["uid"]]
    ports = set()
    for pod in items:
        meta, status = pod["metadata"], pod["status"]
        template_hash = meta["labels"]["pod-template-hash"]
        assert re.fullmatch(rf"web-{template_hash}-[b-z2-9]{{5}}", meta["name"]), meta["name"]
        assert meta["annotations"] == {"note": "hi"} and meta["labels"]["app"] == "web"
        assert meta["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert meta["ownerReferences"][0]["uid"] == rs[0]["metadata"]["uid"]
        assert status["phase"] == "Running" and status["podIP"] == "127.0.0.1"
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        assert status["containerStatuses"][0]["ready"] is True

        start = json.loads((tmp_of(kubelet, namespace, meta["name"]) / "start-1.json").read_text())
        env, argv = start["env"], start["argv"]
        assert (env["PASSWORD"], env["CM_color"], env["CM_size"], env["POD_NAME"]) == ("hunter2", "blue", "9",
                                                                                       meta["name"])
        assert start["say"] == "hi-blue"  # $(GREETING) expanded, GREETING's $(COLOR) too
        assert env["HOME"] == env["TMPDIR"] == str(tmp_of(kubelet, namespace, meta["name"]))
        assert start["cwd"] == str(HERE) and "PYTEST_CURRENT_TEST" not in env  # the image's, not ours
        port = int(argv[argv.index("--port") + 1])
        assert port != 8000 and port == kubelet.pod(namespace, meta["name"]).ports["http"]
        ports.add(port)
    assert len(ports) == 2


def test_missing_references_and_unknown_images_wait(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply(deployment("late", 1, env=[
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]), ns)
    kubectl.apply(deployment("nope", 1, image="example.org/missing:1"), ns)

    def waiting(app: str) -> str | None:
        items = pods(kubectl, namespace, app)
        statuses = items[0].get("status", {}).get("containerStatuses") if items else None
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    until(kubelet, lambda: waiting("late") == "CreateContainerConfigError")
    assert until(kubelet, lambda: waiting("nope")) in ("ErrImagePull", "ImagePullBackOff")
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"},
                   "stringData": {"token": "t"}}, ns)
    until(kubelet, lambda: ready_replicas(kubectl, namespace, "late") == 1)
    assert ready_replicas(kubectl, namespace, "nope") == 0


def test_scale_down_picks_pods_by_deletion_cost_and_terminates_them(
        kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply(deployment("pool", 3), ns)
    until(kubelet, lambda: ready_replicas(kubectl, namespace, "pool") == 3)
    names = [p["metadata"]["name"] for p in pods(kubectl, namespace, "pool")]
    costs = dict(zip(names, ["-10", "0", "50"], strict=True))
    for name, cost in costs.items():
        kubectl("annotate", "pod", name, ns, f"controller.kubernetes.io/pod-deletion-cost={cost}")
    until(kubelet, lambda: all(kubelet.api_pods.get(namespace, n)["metadata"].get("annotations", {})  # type: ignore[index]
                               .get("controller.kubernetes.io/pod-deletion-cost") == c for n, c in costs.items()))

    for replicas, gone in ((2, names[0]), (1, names[1])):
        kubectl("scale", "deployment", "pool", ns, f"--replicas={replicas}")
        until(kubelet, lambda n=replicas: len(pods(kubectl, namespace, "pool")) == n)
        assert gone not in {p["metadata"]["name"] for p in pods(kubectl, namespace, "pool")}
        assert (tmp_of(kubelet, namespace, gone) / "terminated").exists()  # it got SIGTERM
    assert [p["metadata"]["name"] for p in pods(kubectl, namespace, "pool")] == [names[2]]

    # A user's `kubectl delete pod` is graceful too, and the ReplicaSet replaces the pod.
    kubectl("delete", "pod", names[2], ns, "--wait=false")
    until(kubelet, lambda: [p["metadata"]["name"] for p in pods(kubectl, namespace, "pool")
                            if p.get("status", {}).get("phase") == "Running"] not in ([], [names[2]]))
    assert (tmp_of(kubelet, namespace, names[2]) / "terminated").exists()


def test_sigkill_after_the_grace_period(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply(deployment("stubborn", 1, grace=2, env=[{"name": "IGNORE_TERM", "value": "1"}]), ns)
    until(kubelet, lambda: ready_replicas(kubectl, namespace, "stubborn") == 1)
    (pod,) = pods(kubectl, namespace, "stubborn")
    name = pod["metadata"]["name"]
    (pid,) = kubelet.pod(namespace, name).pids
    kubectl("scale", "deployment", "stubborn", ns, "--replicas=0")
    terminating = until(kubelet, lambda: [p for p in pods(kubectl, namespace, "stubborn")
                                          if p["metadata"].get("deletionTimestamp")])
    assert terminating[0]["metadata"]["name"] == name
    asked = time.monotonic()
    until(kubelet, lambda: (tmp_of(kubelet, namespace, name) / "terminated").exists())
    until(kubelet, lambda: not pods(kubectl, namespace, "stubborn"))
    assert time.monotonic() - asked >= 1  # SIGTERM was ignored: it took the grace period (2 s)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_failing_liveness_probe_restarts_the_container(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply(deployment("sickly", 1, livenessProbe={
        "httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 1, "failureThreshold": 2}), ns)
    until(kubelet, lambda: ready_replicas(kubectl, namespace, "sickly") == 1)
    (pod,) = pods(kubectl, namespace, "sickly")
    name = pod["metadata"]["name"]
    (tmp_of(kubelet, namespace, name) / "sick").write_text("")

    def restarted() -> dict[str, Any] | None:
        status = kubectl.json("get", "pod", name, ns)["status"]["containerStatuses"][0]
        return status if status["restartCount"] == 1 and status["ready"] else None

    status = until(kubelet, restarted)
    assert status["lastState"]["terminated"]["exitCode"] == 0  # it exits on SIGTERM; then a fresh start
    assert (tmp_of(kubelet, namespace, name) / "terminated").exists()
    assert (tmp_of(kubelet, namespace, name) / "start-2.json").exists()


def test_jobs_complete_or_fail(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"

    def job(name: str, code: int) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": APP,
                    "command": ["python", "-c", f"import sys; print('bye'); sys.exit({code})"]}]}}}}

    kubectl.apply([job("works", 0), job("breaks", 3)], ns)
    kubectl("wait", "--for=condition=complete", "job/works", ns, "--timeout=30s")
    kubectl("wait", "--for=condition=failed", "job/breaks", ns, "--timeout=30s")
    assert kubectl.json("get", "job", "works", ns)["status"]["succeeded"] == 1
    assert kubectl.json("get", "job", "breaks", ns)["status"]["failed"] == 1
    (pod,) = kubectl.json("get", "pods", ns, "--selector=job-name=breaks")["items"]
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "bye" in kubelet.seen[(namespace, pod["metadata"]["name"])].log()


def test_a_template_change_rolls_pods_over_one_at_a_time(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    dep = deployment("roll", 2, env=[{"name": "V", "value": "1"}])
    dep["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    kubectl.apply(dep, ns)
    until(kubelet, lambda: ready_replicas(kubectl, namespace, "roll") == 2)
    old = {p["metadata"]["name"] for p in pods(kubectl, namespace, "roll")}
    kubectl("patch", "deployment", "roll", ns, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/template/spec/containers/0/env/0/value", "value": "2"}]))
    most = 0

    def rolled() -> bool:
        nonlocal most
        live = pods(kubectl, namespace, "roll")
        most = max(most, len([p for p in live if not p["metadata"].get("deletionTimestamp")]))
        status = kubectl.json("get", "deployment", "roll", ns)["status"]
        return not old & {p["metadata"]["name"] for p in live} and status.get("updatedReplicas") == 2 \
            and status.get("readyReplicas") == 2
    until(kubelet, rolled)
    assert most <= 3  # replicas + maxSurge
    dep_now = kubectl.json("get", "deployment", "roll", ns)
    assert dep_now["status"]["observedGeneration"] == dep_now["metadata"]["generation"] == 2
    assert len({p["metadata"]["labels"]["pod-template-hash"] for p in pods(kubectl, namespace, "roll")}) == 1


def test_a_bare_pod_runs_and_is_deleted_gracefully(kubectl: Kubectl, namespace: str, kubelet: Kubelet) -> None:
    ns = f"--namespace={namespace}"
    template = deployment("bare", 1)["spec"]["template"]
    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "labels": {"app": "bare"}},
                   "spec": template["spec"]}, ns)

    def ready() -> bool:
        status = kubectl.json("get", "pod", "bare", ns).get("status", {})
        return {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready") == "True"

    until(kubelet, ready)
    kubectl("delete", "pod", "bare", ns, "--wait=true", "--timeout=30s")
    assert (tmp_of(kubelet, namespace, "bare") / "terminated").exists()
