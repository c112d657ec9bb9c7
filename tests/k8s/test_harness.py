"""Harness self-tests: the emulator supports kopf's watch/patch/finalizer/event flow and the
calls the operator will make (Secrets, Deployments with owner references, the scale subresource)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Cluster, Kubectl, OperatorProcess, wait_for

PROBE = Path(__file__).with_name("probe_operator.py")


def _queue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"databaseSecretRef": {"name": "db", "key": "url"}, "worker": {"image": "probe:1"}},
    }


def _events(kubectl: Kubectl, namespace: str, involved: str) -> list[dict[str, Any]]:
    items = kubectl.json("get", "events", f"--namespace={namespace}")["items"]
    return [e for e in items if e.get("involvedObject", {}).get("name") == involved]


def test_kopf_operator_reconciles_through_the_harness(
        kubectl: Kubectl, crds_installed: list[str], namespace: str,
        kopf_runner: Callable[..., OperatorProcess]) -> None:
    ns = f"--namespace={namespace}"
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                   "stringData": {"url": "postgresql://probe@db/shoal"}}, ns)
    operator = kopf_runner(path=PROBE, extra_args=["--verbose"])
    kubectl.apply(_queue("probe"), ns)

    def probed() -> dict[str, Any] | None:
        assert operator.proc.poll() is None, f"kopf exited early:\n{operator.log}"
        obj = kubectl.json("get", "queue", "probe", ns)
        return obj if obj.get("status", {}).get("probe") else None

    queue: dict[str, Any] = wait_for(probed, describe=lambda: operator.log[-4000:])
    status = queue["status"]
    assert status["probe"]["databaseUrl"] == "postgresql://probe@db/shoal"
    assert status["probe"]["ownerUid"] == queue["metadata"]["uid"]
    assert status["probe"]["scaleReplicas"] == 3
    assert status["probe_create"] == {"image": "probe:1"}  # kopf stores handler results in status
    assert queue["metadata"]["finalizers"]  # kopf's finalizer went in through a JSON patch

    deployment = kubectl.json("get", "deployment", "probe-workers", ns)
    assert deployment["spec"]["replicas"] == 3
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Queue", "probe", queue["metadata"]["uid"])

    reasons = [e["reason"] for e in _events(kubectl, namespace, "probe")]
    assert "ProbeStarted" in reasons and "ProbeSecret" in reasons

    # Deletion goes through kopf's finalizer: the delete handler runs, then the object is gone.
    kubectl("delete", "queue", "probe", ns, "--wait=true", "--timeout=30s")
    assert kubectl("get", "queue", "probe", ns, check=False).returncode != 0
    assert "ProbeDeleted" in [e["reason"] for e in _events(kubectl, namespace, "probe")]
    assert operator.stop() == 0, operator.log[-4000:]


def test_discovery_core_group_and_subresources(k8s_cluster: Cluster, crds_installed: list[str]) -> None:
    def get(path: str) -> Any:
        with urllib.request.urlopen(k8s_cluster.server + path) as rsp:
            return json.loads(rsp.read())

    if k8s_cluster.emulator is None:
        pytest.skip("a real cluster needs credentials for raw HTTP; kubectl covers it there")
    core = get("/api/v1")
    assert core["groupVersion"] == "v1"
    names = {r["name"]: r for r in core["resources"]}
    assert {"namespaces", "events", "secrets"} <= set(names)
    apps = {r["name"]: r for r in get("/apis/apps/v1")["resources"]}
    assert apps["deployments/scale"]["kind"] == "Scale"
    assert apps["deployments/scale"]["shortNames"] == [] and apps["deployments"]["shortNames"] == ["deploy"]
    shoal = {r["name"]: r for r in get("/apis/shoal.dev/v1alpha1")["resources"]}
    assert {"list", "watch", "patch"} <= set(shoal["queues"]["verbs"])
    assert shoal["queues/status"]["categories"] == [] and shoal["queues"]["categories"] == ["shoal"]


def test_json_patch_test_op_and_conflicts(k8s_cluster: Cluster, kubectl: Kubectl, crds_installed: list[str],
                                          namespace: str) -> None:
    """What kopf relies on: a stale resourceVersion in a JSON-patch `test` is refused with 422."""
    if k8s_cluster.emulator is None:
        pytest.skip("raw HTTP needs the emulator")
    kubectl.apply(_queue("rv"), f"--namespace={namespace}")
    url = f"{k8s_cluster.server}/apis/shoal.dev/v1alpha1/namespaces/{namespace}/queues/rv"

    def patch(ops: Any, content_type: str) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(url, method="PATCH", data=json.dumps(ops).encode(),
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req) as rsp:
                return rsp.status, json.loads(rsp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    rv = kubectl.json("get", "queue", "rv", f"--namespace={namespace}")["metadata"]["resourceVersion"]
    add = {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}
    code, body = patch([{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}, add],
                       "application/json-patch+json")
    assert code == 422 and body["kind"] == "Status"
    code, body = patch([{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, add],
                       "application/json-patch+json")
    assert code == 200 and body["metadata"]["finalizers"] == ["x/y"]
    assert int(body["metadata"]["resourceVersion"]) > int(rv)
    code, body = patch({"metadata": {"resourceVersion": rv, "labels": {"a": "b"}}}, "application/merge-patch+json")
    assert code == 409 and body["reason"] == "Conflict"
    # A no-op patch keeps the resourceVersion (no event either, as on a real server).
    current = kubectl.json("get", "queue", "rv", f"--namespace={namespace}")["metadata"]["resourceVersion"]
    code, body = patch({"spec": {"worker": {"image": "probe:1"}}}, "application/merge-patch+json")
    assert code == 200 and body["metadata"]["resourceVersion"] == current


def test_namespaces_and_label_selectors(kubectl: Kubectl, namespace: str) -> None:
    """Namespaces are served (kmock 0.8 mis-parses /api/v1/namespaces); selectors filter lists."""
    assert kubectl.json("get", "namespace", namespace)["metadata"]["name"] == namespace
    assert f"namespace/{namespace}" in kubectl("get", "namespaces", "-o", "name").stdout.split()
    ns = f"--namespace={namespace}"
    kubectl.apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "labels": {"app": a}}}
                   for n, a in (("one", "a"), ("two", "b"), ("three", "a"))], ns)

    def names(*args: str) -> list[str]:
        return sorted(kubectl("get", "configmaps", ns, "-o", "name", *args).stdout.split())

    assert names("-l", "app=a") == ["configmap/one", "configmap/three"]
    assert names("-l", "app notin (a),app") == ["configmap/two"]
    assert names("--field-selector=metadata.name=two") == ["configmap/two"]
