"""The process kubelet's decisions, as pure functions (unit-tested in test_kubelet_units.py).

- ``template_hash``/``pod_name``: the ReplicaSet naming, ``<deployment>-<hash>-<suffix>``;
- ``deletion_order``: which pod a ReplicaSet deletes first when it scales down;
- ``plan``: how many pods to create and which to delete for a Deployment (scale and rollout);
- ``deployment_status``: the counts a Deployment reports for its pods;
- ``container_env``: a container's environment from ``env``/``envFrom`` and the pod's
  Secrets, ConfigMaps and fields;
- ``Probe``: consecutive successes/failures against the probe's thresholds;
- ``crash_backoff``: the delay before restarting a container that exited.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .kubelet_image import expand_k8s

JSON = dict[str, Any]
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s rand.SafeEncodeString: no vowels, no 0/1/3
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def safe_encode(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        number, index = divmod(number, len(SAFE_ALPHABET))
        out.append(SAFE_ALPHABET[index])
    return "".join(out)


def template_hash(template: Mapping[str, Any]) -> str:
    """The ``pod-template-hash`` label: equal for equal templates, different otherwise."""
    return safe_encode(hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest(), 10)


def pod_name(owner: str, template_hash_: str, suffix: str) -> str:
    return f"{owner}-{template_hash_}-{suffix}"


def deletion_cost(annotations: Mapping[str, str] | None) -> int:
    """The pod-deletion-cost annotation (an int32; absent or invalid counts as 0, as in k8s)."""
    raw = (annotations or {}).get(DELETION_COST)
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        return 0
    return value if -(2**31) <= value < 2**31 else 0


@dataclass(frozen=True)
class PodView:
    """What the ReplicaSet controller looks at when it ranks pods."""

    name: str
    hash: str
    running: bool  # its containers have started (phase Running), else Pending
    ready: bool
    cost: int = 0
    created: float = 0.0  # seconds since the epoch
    ready_since: float | None = None
    restarts: int = 0


def deletion_order(pods: Sequence[PodView]) -> list[PodView]:
    """Pods in the order a ReplicaSet deletes them (controller_utils.ActivePodsWithRanks):
    pending before running, not-ready before ready, lower pod-deletion-cost first, then
    ready for less time, more restarts, and newer before older. (Node-level ranks, e.g.
    pods doubled up on a node, do not apply: there is one node.)"""
    def key(p: PodView) -> tuple[Any, ...]:
        ready_for = -(p.ready_since or 0.0) if p.ready else 0.0
        return (p.running, p.ready, p.cost, ready_for, -p.restarts, -p.created, p.name)
    return sorted(pods, key=key)


def scaled(value: int | str | None, total: int, *, round_up: bool, default: str = "25%") -> int:
    """An IntOrString of a rollout strategy (maxSurge rounds up, maxUnavailable down)."""
    value = default if value is None else value
    if isinstance(value, str) and value.endswith("%"):
        exact = total * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


@dataclass(frozen=True)
class Plan:
    create: int  # new pods from the current template
    delete: tuple[str, ...]  # pod names, in deletion order


def plan(pods: Sequence[PodView], replicas: int, current: str, strategy: Mapping[str, Any] | None = None) -> Plan:
    """What a Deployment's controllers do next, given its live (not terminating) pods.

    Scaling: create or delete pods of the current template. A rollout (pods of an older
    template remain): RollingUpdate surges new pods up to replicas + maxSurge and deletes
    old ones (unhealthy first) while at least replicas - maxUnavailable pods are ready;
    Recreate deletes every old pod before it creates a new one.
    """
    new = [p for p in pods if p.hash == current]
    old = [p for p in pods if p.hash != current]
    strategy = strategy or {}
    if not old:
        if len(new) < replicas:
            return Plan(replicas - len(new), ())
        return Plan(0, tuple(p.name for p in deletion_order(new)[:len(new) - replicas]))
    if strategy.get("type") == "Recreate":
        return Plan(0, tuple(p.name for p in deletion_order(old)))
    rolling = strategy.get("rollingUpdate") or {}
    surge = scaled(rolling.get("maxSurge"), replicas, round_up=True)
    unavailable = scaled(rolling.get("maxUnavailable"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # the API server refuses both zero; the controller would stall
    create = max(0, min(replicas - len(new), replicas + surge - len(pods)))
    excess_new = deletion_order(new)[:max(0, len(new) - replicas)]
    min_available = replicas - unavailable
    new_unavailable = sum(not p.ready for p in new)
    budget = len(pods) - min_available - new_unavailable
    doomed: list[PodView] = []
    for p in deletion_order(old):
        if budget <= 0 and p.ready:
            break
        doomed.append(p)
        budget -= 1
    return Plan(create, tuple(p.name for p in [*doomed, *excess_new]))


def deployment_status(pods: Sequence[PodView], replicas: int, current: str, generation: int,
                      max_unavailable: int = 0) -> JSON:
    """A Deployment's status for its live pods (available = ready: minReadySeconds is 0).
    Zero counts are left out, as the API server's ``omitempty`` does."""
    ready = sum(p.ready for p in pods)
    updated = sum(p.hash == current for p in pods)
    available = ready >= replicas - max_unavailable
    complete = updated == len(pods) == replicas == ready
    conditions = [
        {"type": "Available", "status": str(available),
         "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable"},
        {"type": "Progressing", "status": "True",
         "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated"},
    ]
    counts = {"replicas": len(pods), "updatedReplicas": updated, "readyReplicas": ready,
              "availableReplicas": ready, "unavailableReplicas": max(0, replicas - ready)}
    return {"observedGeneration": generation, **{k: v for k, v in counts.items() if v},
            "conditions": conditions}


class MissingReference(LookupError):
    """A Secret, ConfigMap or key the container's env needs does not exist (the kubelet
    reports CreateContainerConfigError and tries again later)."""


_FIELD_INDEX = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API ``fieldRef``."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    if m := _FIELD_INDEX.match(path):
        return str((meta.get(m[1]) or {}).get(m[2], ""))
    raise MissingReference(f"fieldRef {path!r} is not supported")


def _lookup(kind: str, store: Mapping[str, Mapping[str, str]], ref: Mapping[str, Any]) -> str | None:
    obj = store.get(ref.get("name", ""))
    if obj is None or ref.get("key") not in obj:
        if ref.get("optional"):
            return None
        what = f"{kind} {ref.get('name')!r}" if obj is None else f"key {ref.get('key')!r} in {kind} {ref.get('name')!r}"
        raise MissingReference(f"{what} not found")
    return obj[ref["key"]]


def decode_secret(secret: Mapping[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def container_env(container: Mapping[str, Any], pod: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]],
                  config_maps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The variables Kubernetes sets for a container: ``envFrom`` sources in order (with
    their prefixes), then ``env`` in order (later wins), each ``value`` $(VAR)-expanded
    with the variables before it. ``secrets``/``config_maps`` are the namespace's, decoded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key, store in (("ConfigMap", "configMapRef", config_maps), ("Secret", "secretRef", secrets)):
            if key in source:
                ref = source[key]
                if ref.get("name") not in store:
                    if ref.get("optional"):
                        continue
                    raise MissingReference(f"{kind} {ref.get('name')!r} not found")
                env.update({prefix + k: v for k, v in store[ref["name"]].items()})
    for var in container.get("env") or []:
        name, source = var["name"], var.get("valueFrom")
        value: str | None
        if source is None:
            value = expand_k8s(str(var.get("value", "")), env)
        elif "secretKeyRef" in source:
            value = _lookup("Secret", secrets, source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _lookup("ConfigMap", config_maps, source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"].get("fieldPath", ""))
        else:
            raise MissingReference(f"env {name}: {sorted(source)} is not simulated")
        if value is not None:
            env[name] = value
    return env


@dataclass
class Probe:
    """Consecutive results against the thresholds: readiness starts failed, liveness passed."""

    failure_threshold: int = 3
    success_threshold: int = 1
    passed: bool = False
    successes: int = 0
    failures: int = 0

    @classmethod
    def of(cls, spec: Mapping[str, Any], *, passed: bool) -> Probe:
        return cls(int(spec.get("failureThreshold", 3)), int(spec.get("successThreshold", 1)), passed)

    def observe(self, ok: bool) -> bool:
        """Record one result; True when the verdict (``passed``) changed."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            flip = not self.passed and self.successes >= self.success_threshold
        else:
            self.successes, self.failures = 0, self.failures + 1
            flip = self.passed and self.failures >= self.failure_threshold
        if flip:
            self.passed = not self.passed
        return flip


def crash_backoff(restarts: int, base: float = 10.0, cap: float = 300.0) -> float:
    """The kubelet's CrashLoopBackOff delay before restart number ``restarts`` + 1."""
    return 0.0 if restarts <= 0 else min(cap, base * 2 ** (restarts - 1))
