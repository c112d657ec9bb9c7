"""A Queue resource → its worker Deployment (pure), and how to tell whether a live one drifted.

Security defaults are not optional: workers run as uid 10001 (the image's user), with a
read-only root filesystem, no privilege escalation and every capability dropped; /tmp is
an emptyDir because Python and many libraries want somewhere to write. The database URL
reaches the pod only as a ``secretKeyRef``, never as a literal value in the manifest, so it
is not visible to anyone who can read Deployments.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.operator.naming import (
    TEMPLATE_HASH_ANNOTATION,
    deployment_name,
    selector_labels,
    worker_labels,
)

JSON = dict[str, Any]
METRICS_PORT = 9090
WORKER_UID = 10001
CONTAINER_NAME = "worker"
DATABASE_ENV = "SHOAL_DATABASE_URL"


@dataclass(frozen=True)
class Owner:
    """The Queue resource that owns the Deployment (for the owner reference)."""

    name: str
    namespace: str
    uid: str
    api_version: str = "shoal.dev/v1alpha1"
    kind: str = "Queue"


def _number(value: Any) -> str:
    """Render a CLI number without a spurious '.0' (2.0 → '2', 0.5 → '0.5')."""
    as_float = float(value)
    return str(int(as_float)) if as_float.is_integer() else repr(as_float)


def worker_args(queue_name: str, spec: Mapping[str, Any]) -> list[str]:
    """The ``shoal worker`` arguments the Queue's spec asks for (the image's entrypoint is shoal)."""
    retry = spec.get("retry") or {}
    worker = spec.get("worker") or {}
    args = [
        "worker",
        "--queue", queue_name,
        "--concurrency", str(int(spec.get("concurrency", 10))),
        "--metrics-port", str(METRICS_PORT),
        "--backoff-base", _number(retry.get("backoffBaseSeconds", 1)),
        "--backoff-max", _number(retry.get("backoffMaxSeconds", 300)),
    ]
    if spec.get("jobTimeoutSeconds") is not None:
        args += ["--job-timeout", _number(spec["jobTimeoutSeconds"])]
    tasks = list(worker.get("tasks") or [])
    if tasks:
        args += ["--tasks", *tasks]  # last: --tasks takes every following word
    return args


def _env(spec: Mapping[str, Any]) -> list[JSON]:
    ref = spec["databaseSecretRef"]
    database: JSON = {
        "name": DATABASE_ENV,
        "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref.get("key", "url")}},
    }
    # The user's variables may not override the database URL: it would bypass the Secret.
    extra = [copy.deepcopy(dict(e)) for e in (spec.get("worker") or {}).get("env") or []
             if e.get("name") != DATABASE_ENV]
    return [database, *extra]


def _probe(path: str, period: int, failures: int) -> JSON:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pod_template(owner: Owner, queue_name: str, spec: Mapping[str, Any]) -> JSON:
    """The worker pod template: what drift correction restores."""
    worker = spec.get("worker") or {}
    container: JSON = {
        "name": CONTAINER_NAME,
        "image": worker["image"],
        "args": worker_args(queue_name, spec),
        "env": _env(spec),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "resources": copy.deepcopy(dict(worker.get("resources") or {})),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if worker.get("imagePullPolicy"):
        container["imagePullPolicy"] = worker["imagePullPolicy"]
    pod_spec: JSON = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Workers drain running jobs on SIGTERM (default drain timeout 30 s) before exiting.
        "terminationGracePeriodSeconds": 45,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if worker.get("serviceAccountName"):
        pod_spec["serviceAccountName"] = worker["serviceAccountName"]
    if worker.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(worker["nodeSelector"])
    if worker.get("tolerations"):
        pod_spec["tolerations"] = [copy.deepcopy(dict(t)) for t in worker["tolerations"]]
    metadata: JSON = {"labels": worker_labels(owner.name)}
    if worker.get("podAnnotations"):
        metadata["annotations"] = dict(worker["podAnnotations"])
    return {"metadata": metadata, "spec": pod_spec}


def template_hash(template: Mapping[str, Any]) -> str:
    """A short digest of the desired template, stored on the Deployment: a changed spec is
    noticed even where the API server's defaulting would hide it from a field comparison."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def build_deployment(owner: Owner, queue_name: str, spec: Mapping[str, Any], replicas: int) -> JSON:
    """The whole worker Deployment, as created."""
    template = pod_template(owner, queue_name, spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(owner.name),
            "namespace": owner.namespace,
            "labels": worker_labels(owner.name),
            "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(template)},
            "ownerReferences": [{
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }


def contains(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` holds everything ``desired`` says (dict keys may be extra, as the API
    server adds defaults; lists must match item by item, so added or removed items count)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and contains(actual[k], v)
                                                   for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(actual, list) and len(actual) == len(desired)
                and all(contains(a, d) for a, d in zip(actual, desired, strict=True)))
    return bool(actual == desired)


def drift_patch(live: Mapping[str, Any], desired: Mapping[str, Any], replicas: int | None) -> JSON | None:
    """A JSON merge patch that restores ``desired`` on the ``live`` Deployment, or None if it
    is already converged. Replicas are written only when ``replicas`` is given (see
    `shoal.operator.replicas.replicas_to_set`), so a scaler's choice survives drift correction.
    A merge patch replaces lists wholesale: containers/env/volumes someone added are removed.
    """
    meta, spec = live.get("metadata") or {}, live.get("spec") or {}
    want_meta, want_spec = desired["metadata"], desired["spec"]
    patch: JSON = {}
    if not contains(meta.get("labels") or {}, want_meta["labels"]):
        patch.setdefault("metadata", {})["labels"] = want_meta["labels"]
    spec_changed = not contains(meta.get("annotations") or {}, want_meta["annotations"])
    if spec_changed:
        patch.setdefault("metadata", {})["annotations"] = want_meta["annotations"]
    if not contains(meta.get("ownerReferences") or [], want_meta["ownerReferences"]):
        patch.setdefault("metadata", {})["ownerReferences"] = want_meta["ownerReferences"]
    if spec_changed or not contains(spec.get("template") or {}, want_spec["template"]):
        patch.setdefault("spec", {})["template"] = _merge_template(spec.get("template") or {},
                                                                  want_spec["template"])
    if replicas is not None and spec.get("replicas") != replicas:
        patch.setdefault("spec", {})["replicas"] = replicas
    return patch or None


def _merge_template(live: Mapping[str, Any], desired: Mapping[str, Any]) -> JSON:
    """The template part of the patch: the desired template, plus ``None`` for the pod-spec
    fields we manage but the Queue no longer sets (a merge patch deletes keys set to null).
    Extra pod-template labels and annotations are left alone: ``kubectl rollout restart``
    works by adding one."""
    patch = copy.deepcopy(dict(desired))
    for key in ("serviceAccountName", "nodeSelector", "tolerations"):
        if key in (live.get("spec") or {}) and key not in desired["spec"]:
            patch["spec"][key] = None
    return patch
