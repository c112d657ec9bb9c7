"""A Queue resource → its worker Deployment (pure), and how to tell whether a live one drifted.

Security defaults are not optional: workers run as uid 10001 (the image's user), with a
read-only root filesystem, no privilege escalation and every capability dropped; /tmp is
an emptyDir because Python and many libraries want somewhere to write. The database URL
reaches the pod only as a ``secretKeyRef``, never as a literal value in the manifest, so it
is not visible to anyone who can read Deployments. ``POD_NAME`` (downward API) lets a worker
put its pod's name in its id, which the scale-down's pod-deletion-cost relies on
(`shoal.operator.deletion_cost`). The grace period is the worker's drain plus a margin, so a
scale-down or rollout never kills a worker that is still finishing jobs.

Everything else comes from ``spec.worker``; what the Queue stops setting is deleted from the
Deployment by the drift patch (`drift_patch`), including pod labels and annotations, which
are told apart from those others add by a record on the Deployment (`managed_pod_metadata`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.operator.naming import (
    POD_METADATA_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    deployment_name,
    selector_labels,
    worker_labels,
)
from shoal.operator.queue_spec import TMP_PATH, TMP_VOLUME, QueueSpec

JSON = dict[str, Any]
METRICS_PORT = 9090
WORKER_UID = 10001
CONTAINER_NAME = "worker"
DATABASE_ENV = "SHOAL_DATABASE_URL"
POD_NAME_ENV = "POD_NAME"  # the downward API's metadata.name; workers put it in their id
RESERVED_ENV = frozenset({DATABASE_ENV, POD_NAME_ENV})
DRAIN_MARGIN = 15  # s of grace beyond the drain: release the interrupted jobs, flush, exit
# Pod-spec fields set only when the Queue gives them; dropped from the Queue, they are deleted.
OPTIONAL_POD_FIELDS = ("serviceAccountName", "priorityClassName", "imagePullSecrets", "nodeSelector",
                       "tolerations", "affinity", "topologySpreadConstraints")
# Those of them that are objects: a merge patch would merge them, so the keys the Queue dropped
# are deleted explicitly (lists are replaced whole by a merge patch anyway).
REPLACED_OBJECTS = ("nodeSelector", "affinity")


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


def worker_args(spec: QueueSpec) -> list[str]:
    """The ``shoal worker`` arguments the Queue's spec asks for (the image's entrypoint is shoal)."""
    args = [
        "worker",
        "--queue", spec.queue_name,
        "--concurrency", str(spec.concurrency),
        "--metrics-port", str(METRICS_PORT),
        "--backoff-base", _number(spec.retry.backoff_base_seconds),
        "--backoff-max", _number(spec.retry.backoff_max_seconds),
        "--drain-timeout", str(spec.worker.drain_timeout_seconds),
    ]
    if spec.job_timeout_seconds is not None:
        args += ["--job-timeout", _number(spec.job_timeout_seconds)]
    if spec.worker.tasks:
        args += ["--tasks", *spec.worker.tasks]  # last: --tasks takes every following word
    return args


def grace_period(spec: QueueSpec) -> int:
    """The pod's terminationGracePeriodSeconds: the worker's drain, plus time to release what
    it interrupted and exit, so Kubernetes never kills a worker that is still draining."""
    return spec.worker.drain_timeout_seconds + DRAIN_MARGIN


def _env(spec: QueueSpec) -> list[JSON]:
    ref = spec.database_secret_ref
    database: JSON = {
        "name": DATABASE_ENV,
        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
    }
    # The pod's name, so a worker's id names its pod (the scale-down's pod-deletion-cost).
    pod_name: JSON = {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    # The user's variables may not override these: the URL would bypass the Secret.
    extra = [copy.deepcopy(e) for e in spec.worker.env if e.get("name") not in RESERVED_ENV]
    return [database, pod_name, *extra]


def _probe(path: str, period: int, failures: int) -> JSON:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pod_template(owner: Owner, spec: QueueSpec) -> JSON:
    """The worker pod template: what drift correction restores."""
    worker = spec.worker
    container: JSON = {
        "name": CONTAINER_NAME,
        "image": worker.image,
        "args": worker_args(spec),
        "env": _env(spec),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "resources": copy.deepcopy(worker.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": TMP_PATH},
                         *(copy.deepcopy(m) for m in worker.volume_mounts)],
    }
    if worker.image_pull_policy:
        container["imagePullPolicy"] = worker.image_pull_policy
    if worker.env_from:
        container["envFrom"] = [copy.deepcopy(e) for e in worker.env_from]
    pod_spec: JSON = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Workers drain running jobs on SIGTERM (spec.worker.drainTimeoutSeconds) before exiting.
        "terminationGracePeriodSeconds": grace_period(spec),
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
                    *(copy.deepcopy(v) for v in worker.volumes)],
    }
    optional: dict[str, Any] = {  # each one of OPTIONAL_POD_FIELDS
        "serviceAccountName": worker.service_account_name,
        "priorityClassName": worker.priority_class_name,
        "imagePullSecrets": [copy.deepcopy(s) for s in worker.image_pull_secrets],
        "nodeSelector": dict(worker.node_selector),
        "tolerations": [copy.deepcopy(t) for t in worker.tolerations],
        "affinity": copy.deepcopy(worker.affinity),
        "topologySpreadConstraints": [copy.deepcopy(t) for t in worker.topology_spread_constraints],
    }
    pod_spec.update({key: value for key, value in optional.items() if value})
    metadata: JSON = {"labels": {**worker.pod_labels, **worker_labels(owner.name)}}
    if worker.pod_annotations:
        metadata["annotations"] = dict(worker.pod_annotations)
    return {"metadata": metadata, "spec": pod_spec}


def managed_pod_metadata(spec: QueueSpec) -> str:
    """The pod-template labels and annotations that come from the Queue (not the operator's own),
    recorded on the Deployment so that one the Queue drops later is deleted, while those others
    add (``kubectl rollout restart``'s annotation) are kept."""
    return json.dumps({"annotations": sorted(spec.worker.pod_annotations), "labels": sorted(spec.worker.pod_labels)},
                      separators=(",", ":"))


def template_hash(template: Mapping[str, Any]) -> str:
    """A short digest of the desired template, stored on the Deployment: a changed spec is
    noticed even where the API server's defaulting would hide it from a field comparison."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def build_deployment(owner: Owner, spec: QueueSpec, replicas: int) -> JSON:
    """The whole worker Deployment, as created (with `replicas`; afterwards only the Queue's
    autoscaler changes them, through the scale subresource)."""
    template = pod_template(owner, spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(owner.name),
            "namespace": owner.namespace,
            "labels": worker_labels(owner.name),
            "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(template),
                            POD_METADATA_ANNOTATION: managed_pod_metadata(spec)},
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


def drift_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> JSON | None:
    """A JSON merge patch that restores ``desired`` on the ``live`` Deployment, or None if it
    is already converged. Never replicas: once the Deployment exists the Queue's autoscaler is
    their only writer (or, with autoscaling off, whoever owns them), so drift correction can
    never undo a scale. A merge patch replaces lists wholesale: containers/env/volumes someone
    added are removed; what the Queue no longer sets is deleted (`_merge_template`).
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
        managed = _managed_before(meta.get("annotations") or {})
        patch.setdefault("spec", {})["template"] = _merge_template(spec.get("template") or {},
                                                                  want_spec["template"], managed)
    return patch or None


def _managed_before(annotations: Mapping[str, Any]) -> dict[str, list[str]]:
    """The pod-template labels and annotations the Queue set when the Deployment was last
    written (nothing for a Deployment an older operator wrote)."""
    try:
        recorded = json.loads(annotations.get(POD_METADATA_ANNOTATION) or "{}")
    except ValueError:
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {kind: [str(k) for k in keys] for kind, keys in recorded.items()
            if kind in ("labels", "annotations") and isinstance(keys, list)}


def _replacement(live: Any, desired: Any) -> Any:
    """The merge-patch value that turns ``live`` into ``desired``: nested keys ``desired``
    lacks are set to null (a merge patch deletes those), the rest is ``desired``."""
    if not (isinstance(live, Mapping) and isinstance(desired, Mapping)):
        return copy.deepcopy(desired)
    out: JSON = {key: None for key in live if key not in desired}
    out.update({key: _replacement(live.get(key), value) for key, value in desired.items()})
    return out


def _merge_template(live: Mapping[str, Any], desired: Mapping[str, Any],
                    managed: Mapping[str, list[str]]) -> JSON:
    """The template part of the patch: the desired template, plus ``None`` for what the Queue
    no longer sets (a merge patch deletes keys set to null): pod-spec fields it dropped, keys
    dropped from its objects (nodeSelector, affinity), and the pod labels and annotations it
    had set (`managed`) but dropped. Pod labels and annotations others added are left alone:
    ``kubectl rollout restart`` works by adding one."""
    patch = copy.deepcopy(dict(desired))
    live_spec, want_spec = live.get("spec") or {}, desired["spec"]
    for key in OPTIONAL_POD_FIELDS:
        if key in live_spec and key not in want_spec:
            patch["spec"][key] = None
    for key in REPLACED_OBJECTS:
        if key in live_spec and key in want_spec:
            patch["spec"][key] = _replacement(live_spec[key], want_spec[key])
    if "serviceAccountName" not in want_spec and live_spec.get("serviceAccount"):
        # The API server mirrors serviceAccountName into this deprecated alias, and reads it
        # back when the name is empty: deleting only the name would keep the old account.
        patch["spec"]["serviceAccount"] = None
    live_meta = live.get("metadata") or {}
    for kind in ("labels", "annotations"):
        wanted = desired["metadata"].get(kind) or {}
        dropped = {key: None for key in managed.get(kind, ())
                   if key in (live_meta.get(kind) or {}) and key not in wanted}
        if dropped:
            patch["metadata"][kind] = {**wanted, **dropped}
    return patch
