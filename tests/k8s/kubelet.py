"""A process kubelet for the emulator: Deployments and Jobs run as real local processes.

It is a controller like any other: it lists and watches Deployments, Jobs and Pods through
the emulator's HTTP API (never its internals), so what it sees is what the operator wrote.
It plays the Deployment and ReplicaSet controllers, the Job controller, the garbage
collector and the kubelet of one node:

- Pods: one per replica, named ``<deployment>-<pod-template-hash>-<suffix>``, with the
  template's labels (plus ``pod-template-hash``) and annotations, an ownerReference to a
  ReplicaSet ``<deployment>-<hash>`` (itself owned by the Deployment), ``nodeName``,
  ``status.phase``/``conditions``/``podIP``/``containerStatuses`` (restartCount, state).
  Bare Pods (no owner) are run too; Job pods are ``<job>-<suffix>``.
- Containers: the image's command line (ENTRYPOINT/CMD parsed from its Dockerfile, then the
  container's command/args, kubelet_image.command_line), its ENV then the container's
  env/envFrom (values, secretKeyRef, configMapKeyRef, fieldRef; a missing reference gives
  CreateContainerConfigError until it appears), working directory, and volume mounts (every
  volume is an empty per-pod directory: the chart's /tmp emptyDir). An image the kubelet
  does not know is ErrImagePull.
- Ports: all pods share this host, so each named containerPort gets its own host port and
  the process is told through the image's port flags (kubelet_image, "Ports").
- Probes: httpGet (and tcpSocket, exec) readiness and liveness, with initialDelaySeconds,
  periodSeconds, timeoutSeconds and the thresholds; readiness drives the pod's Ready
  condition and the Deployment's readyReplicas/availableReplicas; a failed liveness probe
  restarts the container (restartCount), as does an exit (restartPolicy; CrashLoopBackOff
  delays of 10 s, 20 s, ...).
- Scaling: RollingUpdate/Recreate rollouts and scale-down choose pods as the ReplicaSet
  controller does (kubelet_pods.deletion_order: not ready first, then lower
  ``controller.kubernetes.io/pod-deletion-cost``, then newer). Deleting a pod (ours or a
  user's ``kubectl delete pod``) is graceful: our finalizer holds the Pod while the process
  gets SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``; then the Pod goes.
- Deployment status: replicas, updatedReplicas, readyReplicas, availableReplicas,
  unavailableReplicas, observedGeneration, Available/Progressing conditions.
- Jobs: pods until ``completions`` (1) succeed or ``backoffLimit`` failures; Complete/Failed.
- Service account: instead of a token under /var/run/secrets, a pod gets KUBECONFIG
  pointing at the emulator (unless automountServiceAccountToken is false).

Modules: kubelet.py (the loop, pods, garbage collection), kubelet_controllers.py (Deployment,
ReplicaSet, Job), kubelet_runtime.py (processes, probes, pod status), kubelet_api.py (HTTP
and informers), kubelet_pods.py and kubelet_image.py (the pure decisions, unit-tested in
test_kubelet_units.py).

Only a real cluster shows: scheduling (nodeSelector, affinity, tolerations, topology
spread), pulling images and the image's own filesystem (the image is a local directory
mapping), network isolation and policies, Services and DNS, RBAC enforcement (the emulator
allows every call), admission and PodSecurity, resource requests/limits and OOM kills,
securityContext (runAsUser, readOnlyRootFilesystem: the process runs as the test's user and
may write anywhere it can; test_image_e2e.py checks the image's directories stay unwritten),
the pod's network identity (every pod is 127.0.0.1 on host ports; gethostname() is this
host's, only $HOSTNAME is the pod's name), volume contents other than empty dirs, init containers and
sidecars, startup probes, preStop hooks, PodDisruptionBudgets, minReadySeconds,
progressDeadlineSeconds, activeDeadlineSeconds, and timing under real load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .kubelet_api import Api, Informer
from .kubelet_controllers import Controllers
from .kubelet_image import Image
from .kubelet_pods import MissingReference, container_env, decode_secret
from .kubelet_runtime import Container, LocalPod, free_port, run_probes

JSON = dict[str, Any]
FINALIZER = "kubelet.shoal.test/process"
NODE = "process-kubelet"


@dataclass(frozen=True)
class PodInfo:
    """A snapshot of one pod for tests (safe to read from any thread)."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    phase: str
    ready: bool
    restarts: int
    pids: tuple[int, ...]
    ports: Mapping[str, int]  # port name (and number) -> host port, first container's first
    dir: Path
    logs: tuple[Path, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str]

    def url(self, port: str | int, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[str(port)]}{path}"

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


class Kubelet(Controllers):
    def __init__(self, server: str, images: Mapping[str, Image], root: Path, *, token: str = "",
                 kubeconfig: Path | None = None, namespaces: set[str] | None = None, tick: float = 0.2) -> None:
        self.server, self.token, self.images, self.root = server, token, dict(images), root
        self.kubeconfig, self.namespaces, self.tick = kubeconfig, namespaces, tick
        self.pods: dict[tuple[str, str], LocalPod] = {}
        self.snapshot: dict[tuple[str, str], PodInfo] = {}
        self.seen: dict[tuple[str, str], PodInfo] = {}  # every pod ever run, last snapshot
        self.errors: list[str] = []
        self._jobs: dict[str, JSON] = {}  # Job uid -> counts
        self._replicasets: dict[tuple[str, str], str] = {}  # (ns, name) -> uid
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="process-kubelet", daemon=True)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        root.mkdir(parents=True, exist_ok=True)

    # -- lifecycle (called from the test's thread) -----------------------------------------
    def start(self) -> Kubelet:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self, grace: float = 5) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result(grace + 15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def pod(self, namespace: str, name: str) -> PodInfo:
        return self.snapshot[(namespace, name)]

    def running(self, namespace: str | None = None, **labels: str) -> list[PodInfo]:
        """Live pods (optionally of a namespace and with these labels), by name."""
        return sorted((p for p in self.snapshot.values()
                       if (namespace is None or p.namespace == namespace)
                       and all(p.labels.get(k) == v for k, v in labels.items())), key=lambda p: p.name)

    # -- the loop ------------------------------------------------------------------------
    async def _start(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(self.server, headers=headers, read_bufsize=2**22)
        self._probes = aiohttp.ClientSession()
        self.api = Api(self._session)
        self.deployments = Informer(self.api, "/apis/apps/v1/deployments", self._wake)
        self.jobs = Informer(self.api, "/apis/batch/v1/jobs", self._wake)
        self.api_pods = Informer(self.api, "/api/v1/pods", self._wake)
        for informer in (self.deployments, self.jobs, self.api_pods):
            self._spawn(informer.run())
        self._spawn(self._run())

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(self, grace: float) -> None:
        for task in list(self._tasks):
            task.cancel()
        containers = [c for p in self.pods.values() for c in p.containers]
        for c in containers:
            c.restart_after_exit = False
            c.stop(grace)
        deadline = time.monotonic() + grace
        while any(c.running for c in containers) and time.monotonic() < deadline:  # noqa: ASYNC110 (processes)
            await asyncio.sleep(0.1)
        for c in containers:
            c.kill_at = 0
            c.enforce()
            c.reap("Never")
        await self._session.close()
        await self._probes.close()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()
            if not all(i.synced for i in (self.deployments, self.jobs, self.api_pods)):
                continue
            try:
                await self._pass()
            except Exception:  # keep running: a test reads the errors when it fails
                self.errors.append(traceback.format_exc())
                await asyncio.sleep(self.tick)

    def _ours(self, obj: JSON) -> bool:
        return self.namespaces is None or obj["metadata"].get("namespace") in self.namespaces

    async def _pass(self) -> None:
        for dep in [d for d in self.deployments.items() if self._ours(d)]:
            await self._deployment(dep)
        for job in [j for j in self.jobs.items() if self._ours(j)]:
            await self._job(job)
        await self._adopt_and_collect()
        for pod in list(self.pods.values()):
            await self._sync(pod)
        self.snapshot = {key: self._info(p) for key, p in self.pods.items()}
        self.seen.update(self.snapshot)

    async def _adopt_and_collect(self) -> None:
        """Run bare Pods someone else created; stop pods whose owner is gone (the garbage
        collector) or that someone deleted (graceful deletion: our finalizer holds them)."""
        for obj in self.api_pods.items():
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if key not in self.pods and self._ours(obj) and not obj["metadata"].get("ownerReferences") \
                    and not obj["metadata"].get("deletionTimestamp") and not obj.get("status", {}).get("phase"):
                finalizers = [*obj["metadata"].get("finalizers", []), FINALIZER]
                adopted = await self.api.patch(f"/api/v1/namespaces/{key[0]}/pods/{key[1]}",
                                               {"metadata": {"finalizers": finalizers},
                                                "spec": {"nodeName": NODE}})
                if adopted is not None:
                    self._add_pod(adopted)
        deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in self.deployments.items()}
        jobs = {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in self.jobs.items()}
        for pod in list(self.pods.values()):
            live = self.api_pods.get(pod.namespace, pod.name)
            pod.listed = pod.listed or live is not None
            orphan = (pod.deployment is not None and (pod.namespace, pod.deployment) not in deployments) or \
                     (pod.controller[0] == "Job" and (pod.namespace, pod.controller[1]) not in jobs)
            if (live is None and pod.listed) or orphan or (live or {}).get("metadata", {}).get("deletionTimestamp"):
                await self._delete(pod, gone=live is None and pod.listed)
        for ns, name in list(self._replicasets):
            if (ns, name.rsplit("-", 1)[0]) not in deployments:
                del self._replicasets[(ns, name)]
                await self.api.delete(f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}")

    # -- pods ----------------------------------------------------------------------------
    async def _create_pod(self, ns: str, name: str, template: JSON, owner: JSON, labels: Mapping[str, str],
                          deployment: str | None = None, hash_: str = "") -> None:
        tmeta = template.get("metadata") or {}
        meta: JSON = {"name": name, "namespace": ns, "labels": {**(tmeta.get("labels") or {}), **labels},
                      "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
                      "finalizers": [FINALIZER]}
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {**(template.get("spec") or {}), "nodeName": NODE}}
        created = await self.api.create(f"/api/v1/namespaces/{ns}/pods", body)
        self._add_pod(created, deployment, hash_, (owner["kind"], owner["name"]))

    def _add_pod(self, obj: JSON, deployment: str | None = None, hash_: str = "",
                 controller: tuple[str, str] = ("", "")) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        pod_dir = self.root / "pods" / f"{ns}_{name}"
        containers = []
        for spec in (obj.get("spec") or {}).get("containers") or []:
            ports = {}
            for port in spec.get("ports") or []:
                entry = (int(port["containerPort"]), free_port())
                ports[str(port["containerPort"])] = entry
                if port.get("name"):
                    ports[port["name"]] = entry
            containers.append(Container(spec, self.root / "logs" / f"{ns}_{name}_{spec['name']}.log", ports))
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        pod_dir.mkdir(parents=True, exist_ok=True)
        self.pods[(ns, name)] = LocalPod(obj, pod_dir, containers, controller, deployment, hash_)
        self._wake.set()

    async def _delete(self, pod: LocalPod, *, gone: bool = False) -> None:
        """Start a graceful deletion: SIGTERM now, SIGKILL after the grace period (``_sync``)."""
        if pod.terminating:
            return
        pod.terminating = True
        for c in pod.containers:
            c.restart_after_exit = False
            c.stop(0 if gone else pod.grace)
        if not gone:
            await self.api.delete(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}")

    async def _sync(self, pod: LocalPod) -> None:
        for c in pod.containers:
            c.reap(pod.restart_policy)
            if c.liveness is not None and not c.liveness.passed and c.kill_at is None and c.running:
                c.stop(pod.grace)  # a failed liveness probe: restart the container
            c.enforce()
            if not pod.terminating and c.proc is None and not pod.finished(c) and time.monotonic() >= c.next_start:
                await self._start_container(pod, c)
        pod.update_phase()
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        if pod.terminating and not any(c.running for c in pod.containers):
            del self.pods[pod.key]
            live = self.api_pods.get(*pod.key) or {"metadata": {}}
            rest = [f for f in live["metadata"].get("finalizers", []) if f != FINALIZER]
            await self.api.patch(path, {"metadata": {"finalizers": rest or None}})  # the Pod goes
            return
        if self.api_pods.get(*pod.key) is not None:
            await self.api.write_status(path + "/status", pod.status())

    async def _start_container(self, pod: LocalPod, c: Container) -> None:
        image = self.images.get(c.spec.get("image", ""))
        retry = time.monotonic() + 1
        if image is None:
            c.waiting("ErrImagePull" if c.state.get("waiting", {}).get("reason") != "ErrImagePull"
                      else "ImagePullBackOff", f"the process kubelet knows no image {c.spec.get('image')!r}")
            c.next_start = retry
            return
        secrets = {s["metadata"]["name"]: decode_secret(s)
                   for s in (await self.api.get(f"/api/v1/namespaces/{pod.namespace}/secrets"))["items"]}
        config_maps = {m["metadata"]["name"]: {k: str(v) for k, v in (m.get("data") or {}).items()}
                       for m in (await self.api.get(f"/api/v1/namespaces/{pod.namespace}/configmaps"))["items"]}
        try:
            k8s_env = container_env(c.spec, {**pod.obj, "status": pod.status()}, secrets, config_maps)
        except MissingReference as exc:
            c.waiting("CreateContainerConfigError", str(exc))
            c.next_start = retry
            return
        pod_env = {"HOSTNAME": pod.name}
        if self.kubeconfig is not None and pod.spec.get("automountServiceAccountToken", True):
            pod_env["KUBECONFIG"] = str(self.kubeconfig)
        try:
            c.start(image, k8s_env, pod_env, {**image.mounts, **pod.volume_mounts(c.spec)}, pod.dir)
        except OSError as exc:
            c.start_failed(str(exc), pod.restart_policy)
            return
        for kind in ("readiness", "liveness"):
            if f"{kind}Probe" in c.spec:
                self._spawn(run_probes(c, kind, self._probes, self._wake.set))

    def _info(self, pod: LocalPod) -> PodInfo:
        first = pod.containers[0] if pod.containers else None
        ports = {k: host for c in reversed(pod.containers) for k, (_, host) in c.ports.items()}
        return PodInfo(pod.namespace, pod.name, dict(pod.obj["metadata"].get("labels") or {}), pod.phase,
                       pod.ready, sum(c.restarts for c in pod.containers),
                       tuple(c.proc.pid for c in pod.containers if c.proc is not None), ports, pod.dir,
                       tuple(c.log_path for c in pod.containers), tuple(first.argv if first else ()),
                       dict(first.env if first else {}))


def dump(kubelet: Kubelet) -> str:
    """Pods, their logs' tails and the kubelet's errors, for failure messages."""
    lines = [json.dumps({f"{p.namespace}/{p.name}": [p.phase, p.ready, p.restarts, dict(p.ports)]
                         for p in kubelet.seen.values()}, indent=1)]
    for p in kubelet.seen.values():
        lines.append(f"--- {p.namespace}/{p.name}:\n{p.log()[-2500:]}")
    return "\n".join([*lines, *kubelet.errors[-3:]])
