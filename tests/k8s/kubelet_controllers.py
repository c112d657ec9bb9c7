"""The controllers the process kubelet plays besides the kubelet itself: the Deployment and
ReplicaSet controllers (scale, rollout, status) and the Job controller (kubelet.py has the
loop, the pods and the garbage collection)."""

from __future__ import annotations

import secrets as _random
import time
from collections.abc import Mapping
from typing import Any

from .kubelet_api import Api, Informer
from .kubelet_pods import (
    SAFE_ALPHABET,
    PodView,
    crash_backoff,
    deletion_cost,
    deployment_status,
    plan,
    pod_name,
    scaled,
    template_hash,
)
from .kubelet_runtime import LocalPod, now_iso

JSON = dict[str, Any]


def owner_ref(obj: JSON) -> JSON:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": meta["name"],
            "uid": meta["uid"]}


class Controllers:
    """Mixed into the Kubelet, whose pods, API and pod operations these use."""

    api: Api
    api_pods: Informer
    pods: dict[tuple[str, str], LocalPod]
    _jobs: dict[str, JSON]
    _replicasets: dict[tuple[str, str], str]

    async def _create_pod(self, ns: str, name: str, template: JSON, owner: JSON, labels: Mapping[str, str],
                          deployment: str | None = None, hash_: str = "") -> None:
        raise NotImplementedError

    async def _delete(self, pod: LocalPod, *, gone: bool = False) -> None:
        raise NotImplementedError

    def _view(self, pod: LocalPod) -> PodView:
        live = self.api_pods.get(pod.namespace, pod.name) or pod.obj
        return PodView(pod.name, pod.hash, pod.phase == "Running", pod.ready,
                       deletion_cost(live["metadata"].get("annotations")), pod.created, pod.ready_since,
                       sum(c.restarts for c in pod.containers))

    async def _deployment(self, dep: JSON) -> None:
        meta, spec = dep["metadata"], dep.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        template = spec.get("template") or {}
        current, replicas = template_hash(template), int(spec.get("replicas", 1))
        owned = [p for p in self.pods.values() if p.namespace == ns and p.deployment == name and not p.terminating]
        decision = plan([self._view(p) for p in owned], replicas, current, spec.get("strategy"))
        if decision.create:
            rs = await self._replicaset(dep, current, template)
            for _ in range(decision.create):
                suffix = "".join(_random.choice(SAFE_ALPHABET) for _ in range(5))
                await self._create_pod(ns, pod_name(name, current, suffix), template, rs,
                                       {"pod-template-hash": current}, deployment=name, hash_=current)
        for victim in decision.delete:
            await self._delete(self.pods[(ns, victim)])
        live = [self._view(p) for p in self.pods.values()
                if p.namespace == ns and p.deployment == name and not p.terminating]
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        unavailable = scaled(rolling.get("maxUnavailable"), replicas, round_up=False)
        status = deployment_status(live, replicas, current, int(meta.get("generation", 1)), unavailable)
        await self.api.write_status(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status", status)
        for rs_ns, rs_name in list(self._replicasets):
            if rs_ns == ns and rs_name.rsplit("-", 1)[0] == name:
                mine = [v for v in live if f"{name}-{v.hash}" == rs_name]
                await self.api.write_status(f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs_name}/status", {
                    "replicas": len(mine), "readyReplicas": sum(v.ready for v in mine),
                    "availableReplicas": sum(v.ready for v in mine), "observedGeneration": 1})

    async def _replicaset(self, dep: JSON, current: str, template: JSON) -> JSON:
        meta = dep["metadata"]
        ns, name = meta["namespace"], f"{meta['name']}-{current}"
        if (ns, name) not in self._replicasets:
            body = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
                "name": name, "namespace": ns, "labels": {**(template.get("metadata") or {}).get("labels", {}),
                                                          "pod-template-hash": current},
                "ownerReferences": [owner_ref(dep)]},
                "spec": {"selector": (dep.get("spec") or {}).get("selector"), "template": template}}
            rs = await self.api.create(f"/apis/apps/v1/namespaces/{ns}/replicasets", body)
            self._replicasets[(ns, name)] = rs["metadata"]["uid"]
        return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": self._replicasets[(ns, name)]}

    async def _job(self, job: JSON) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        state = self._jobs.setdefault(uid, {"succeeded": 0, "failed": 0, "done": "", "next": 0.0,
                                            "start": now_iso(), "end": ""})
        pods = [p for p in self.pods.values() if p.namespace == ns and p.controller == ("Job", name)]
        for p in pods:
            if p.phase in ("Succeeded", "Failed") and not p.counted:
                p.counted = True
                state["succeeded" if p.phase == "Succeeded" else "failed"] += 1
                state["next"] = time.monotonic() + crash_backoff(state["failed"])
        active = [p for p in pods if p.phase in ("Pending", "Running") and not p.terminating]
        if not state["done"]:
            if state["succeeded"] >= int(spec.get("completions", 1)):
                state["done"], state["end"] = "Complete", now_iso()
            elif state["failed"] > int(spec.get("backoffLimit", 6)):
                state["done"], state["end"] = "Failed", now_iso()
                for p in active:
                    await self._delete(p)
            elif not active and time.monotonic() >= state["next"]:
                suffix = "".join(_random.choice(SAFE_ALPHABET) for _ in range(5))
                labels = {"batch.kubernetes.io/job-name": name, "job-name": name,
                          "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid}
                await self._create_pod(ns, f"{name}-{suffix}", spec.get("template") or {}, owner_ref(job), labels)
        status: JSON = {"startTime": state["start"], "active": len(active) if not state["done"] else 0,
                        "succeeded": state["succeeded"], "failed": state["failed"],
                        "ready": sum(p.ready for p in active)}
        if state["done"]:
            reason = "BackoffLimitExceeded" if state["done"] == "Failed" else "CompletionsReached"
            first = "FailureTarget" if state["done"] == "Failed" else "SuccessCriteriaMet"
            status["conditions"] = [{"type": t, "status": "True", "reason": reason, "lastTransitionTime": state["end"]}
                                    for t in (first, state["done"])]
            if state["done"] == "Complete":
                status["completionTime"] = state["end"]
        status = {k: v for k, v in status.items() if v or k == "startTime"}
        await self.api.write_status(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}/status", status)

