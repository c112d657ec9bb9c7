"""The process kubelet's container runtime: one local process per container, its probes, and
the Pod status they add up to (kubelet.py decides which pods exist; this runs them)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .kubelet_image import Image, command_line, map_paths, rewrite_ports
from .kubelet_pods import Probe, crash_backoff

JSON = dict[str, Any]
HOST_IP = "127.0.0.1"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST_IP, 0))
        return int(s.getsockname()[1])


@dataclass
class Container:
    """One container of a pod: its process, restarts, probes and Kubernetes state."""

    spec: JSON
    log_path: Path
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)  # name or number -> (container, host)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    starts: int = 0
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    readiness: Probe | None = None
    liveness: Probe | None = None
    next_start: float = 0.0
    kill_at: float | None = None  # a SIGTERM was sent; SIGKILL at this monotonic time
    restart_after_exit: bool = True
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        return self.running and self.kill_at is None and (self.readiness is None or self.readiness.passed)

    def host_port(self, port: int | str) -> int | None:
        """The host port behind a containerPort given by name or number."""
        if str(port) in self.ports:
            return self.ports[str(port)][1]
        return next((host for cport, host in self.ports.values() if str(cport) == str(port)), None)

    def waiting(self, reason: str, message: str = "") -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def start(self, image: Image, k8s_env: Mapping[str, str], pod_env: Mapping[str, str],
              mounts: Mapping[str, Path], scratch: Path) -> None:
        """Start the process: the image's ENV, then the pod's env; the command line from the
        image and the container; image paths mapped to this host; ports rewritten."""
        env = {k: map_paths(v, mounts) for k, v in image.config.env}
        env.update({k: map_paths(v, mounts) for k, v in k8s_env.items()})
        env.update(pod_env)
        argv = [map_paths(a, mounts) for a in command_line(image.config, self.spec, k8s_env)]
        argv = rewrite_ports(argv, {k: v for k, v in self.ports.items() if not k.isdigit()}, image.port_flags)
        if argv and "/" not in argv[0]:
            argv[0] = shutil.which(argv[0], path=env.get("PATH", "")) or argv[0]
        cwd = Path(map_paths(self.spec.get("workingDir") or image.config.workdir, mounts))
        if not cwd.is_dir():
            cwd = scratch / "workdir"  # an unmapped directory: Docker would have created it empty
            cwd.mkdir(parents=True, exist_ok=True)
        self.argv, self.env = argv, env
        log = self.log_path.open("ab")
        try:
            log.write(f"--- start {self.starts + 1}: {argv} in {cwd}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.starts += 1
        self.kill_at = None
        self.state = {"running": {"startedAt": now_iso()}}
        self.readiness = Probe.of(self.spec["readinessProbe"], passed=False) if "readinessProbe" in self.spec else None
        self.liveness = Probe.of(self.spec["livenessProbe"], passed=True) if "livenessProbe" in self.spec else None

    def stop(self, grace: float) -> None:
        """SIGTERM now (once); SIGKILL when the grace period is over (see ``enforce``)."""
        if self.running and self.kill_at is None and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            self.kill_at = time.monotonic() + grace

    def enforce(self) -> None:
        if self.proc is not None and self.kill_at is not None and time.monotonic() >= self.kill_at:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def start_failed(self, message: str, restart_policy: str) -> None:
        """The process could not be started (no such command...): a StartError exit, 128."""
        now = now_iso()
        self.starts += 1
        self.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": message,
                                     "startedAt": now, "finishedAt": now}}
        self._after_exit(128, restart_policy)

    def reap(self, restart_policy: str) -> bool:
        """If the process exited: record it, schedule a restart per the policy; True if it exited."""
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the container's process group
        started = self.state.get("running", {}).get("startedAt", now_iso())
        self.state = {"terminated": {"exitCode": 128 - code if code < 0 else code,  # 143: SIGTERM, 137: SIGKILL
                                     "reason": "Completed" if code == 0 else "Error",
                                     "startedAt": started, "finishedAt": now_iso()}}
        self.proc = None
        self._after_exit(code, restart_policy)
        return True

    def _after_exit(self, code: int, restart_policy: str) -> None:
        again = self.restart_after_exit and (restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0))
        if again:
            self.last_state = self.state
            self.next_start = time.monotonic() + crash_backoff(self.restarts)
            self.restarts += 1
            if self.next_start > time.monotonic():
                self.waiting("CrashLoopBackOff", f"back-off restarting failed container {self.name}")

    def status(self) -> JSON:
        return {"name": self.name, "image": self.spec.get("image", ""), "imageID": "",
                "containerID": f"process://{self.proc.pid}" if self.proc else "",
                "ready": self.ready, "started": self.running, "restartCount": self.restarts,
                "state": self.state, "lastState": self.last_state}


async def probe_once(spec: Mapping[str, Any], container: Container, session: aiohttp.ClientSession) -> bool:
    """One httpGet, tcpSocket or exec probe of the container (on its pod's host ports)."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = container.host_port(get["port"]) or int(get["port"])
            url = f"http://{HOST_IP}:{port}{get.get('path', '/')}"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return 200 <= resp.status < 400
        if "tcpSocket" in spec:
            port = container.host_port(spec["tcpSocket"]["port"]) or int(spec["tcpSocket"]["port"])
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST_IP, port), timeout)
            writer.close()
            return True
        if "exec" in spec:
            proc = await asyncio.create_subprocess_exec(*spec["exec"]["command"], env=container.env,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            try:
                return await asyncio.wait_for(proc.wait(), timeout) == 0
            except TimeoutError:
                proc.kill()
                return False
    except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return False


async def run_probes(container: Container, kind: str, session: aiohttp.ClientSession,
                     changed: Callable[[], None]) -> None:
    """Probe one start of the container every periodSeconds, from initialDelaySeconds on,
    until that process is gone; ``changed`` is called when a verdict flips."""
    spec = container.spec[f"{kind}Probe"]
    proc = container.proc
    tracker = container.readiness if kind == "readiness" else container.liveness
    await asyncio.sleep(float(spec.get("initialDelaySeconds", 0)))
    while container.proc is proc and container.running and tracker is not None:
        if tracker.observe(await probe_once(spec, container, session)):
            changed()
        await asyncio.sleep(float(spec.get("periodSeconds", 10)))


@dataclass
class LocalPod:
    """A Pod this kubelet runs: the API object it was created as, its containers, its dirs."""

    obj: JSON
    dir: Path
    containers: list[Container]
    controller: tuple[str, str] = ("", "")  # (kind, name) of the owner that manages it
    deployment: str | None = None
    hash: str = ""
    created: float = field(default_factory=time.time)
    start_time: str = field(default_factory=now_iso)
    phase: str = "Pending"
    terminating: bool = False
    ready_since: float | None = None
    counted: bool = False  # a finished Job pod already counted in the Job's status
    listed: bool = False  # the Pod informer has seen it (until then, its absence means nothing)
    transitions: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def spec(self) -> JSON:
        return self.obj.get("spec") or {}  # type: ignore[no-any-return]

    @property
    def restart_policy(self) -> str:
        return str(self.spec.get("restartPolicy", "Always"))

    @property
    def grace(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))

    @property
    def ready(self) -> bool:
        return self.phase == "Running" and not self.terminating and all(c.ready for c in self.containers)

    def volume_mounts(self, container: Mapping[str, Any]) -> dict[str, Path]:
        """Every volume is a directory of this pod (an emptyDir; other kinds are not filled)."""
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            path = self.dir / "volumes" / mount["name"]
            path.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = path
        return mounts

    def finished(self, c: Container) -> bool:
        return c.proc is None and "terminated" in c.state and c.starts > 0 and (
            self.restart_policy == "Never" or not c.restart_after_exit
            or (self.restart_policy == "OnFailure" and c.state["terminated"]["exitCode"] == 0))

    def update_phase(self) -> None:
        if all(self.finished(c) for c in self.containers):
            ok = all(c.state["terminated"]["exitCode"] == 0 for c in self.containers)
            self.phase = "Succeeded" if ok else "Failed"
        elif all(c.starts > 0 for c in self.containers):
            self.phase = "Running"
        ready = self.ready
        if ready and self.ready_since is None:
            self.ready_since = time.time()
        elif not ready:
            self.ready_since = None

    def _condition(self, type_: str, value: bool) -> JSON:
        old = self.transitions.get(type_)
        if old is None or old[0] != value:
            self.transitions[type_] = old = (value, now_iso())
        return {"type": type_, "status": str(value), "lastTransitionTime": old[1]}

    def status(self) -> JSON:
        ready = self.ready
        return {
            "phase": self.phase,
            "conditions": [self._condition("PodScheduled", True), self._condition("Initialized", True),
                           self._condition("ContainersReady", ready), self._condition("Ready", ready)],
            "hostIP": HOST_IP, "podIP": HOST_IP, "podIPs": [{"ip": HOST_IP}], "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
