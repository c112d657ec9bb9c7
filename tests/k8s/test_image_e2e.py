"""The image as it runs: the wheel installed into a venv laid out as the Dockerfile lays it out
(image_venv.py), and the process kubelet starting the operator (from the `operator` target) and a
worker (from the lean `worker` target) with the Dockerfile's ENTRYPOINT, ENV (HOME=/tmp, TMPDIR=/tmp,
PYTHONPATH=/app, ...) and WORKDIR. A user's image adds its task module under /app
(``FROM shoal-worker`` + ``COPY``).

The pods' /tmp is an emptyDir (a directory of the pod), as the chart and the operator mount
it; whatever the processes write goes there, and the venv and /app are left exactly as they
were (the image's read-only root filesystem). Emulator only: it is about the image layout.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from helpers import eventually

from .conftest import E2E_ENV, Kubectl
from .image_venv import shoal_image, tree_state
from .kubelet import Kubelet, dump

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(os.environ.get(E2E_ENV)),
                                                    reason="the process kubelet runs the image; not a real cluster")]

TASKS = '''
import json, os, sys, tempfile
from pathlib import Path

import shoal
from shoal.tasks import Job, task


@task("email.report")
async def report(job: Job) -> None:
    """Report where this process lives, and write where libraries write: TMPDIR and HOME."""
    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".scratch") as scratch:
        scratch.write("x")
    cache = Path.home() / ".cache" / "email_worker"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "state").write_text("y")
    Path(os.environ["TMPDIR"], "report.json").write_text(json.dumps({
        "home": os.environ["HOME"], "tmpdir": os.environ["TMPDIR"], "scratch": scratch.name,
        "cwd": os.getcwd(), "prefix": sys.prefix, "shoal": shoal.__file__, "argv0": sys.argv[0],
        "pythonpath": os.environ.get("PYTHONPATH"), "no_bytecode": sys.dont_write_bytecode,
        "payload": job.payload}))
'''


def operator_deployment(namespace: str) -> dict[str, Any]:
    container = {
        "name": "operator", "image": "shoal:image-test", "args": ["operator", "--standalone", "--namespace", namespace],
        "ports": [{"name": "health", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shoal-operator"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "shoal-operator"}},
                     "template": {"metadata": {"labels": {"app": "shoal-operator"}},
                                  "spec": {"containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}]}}}}


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_operator_and_worker_run_from_the_image_layout_and_write_only_to_tmp(
        kubectl: Kubectl, crds_installed: list[str], namespace: str, db_url: str, process_kubelet: Kubelet,
        image_venv: Path, worker_image_venv: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "email_worker").mkdir(parents=True)
    (app / "email_worker" / "__init__.py").write_text("")
    (app / "email_worker" / "tasks.py").write_text(TASKS)
    kubelet = process_kubelet
    kubelet.images["shoal:image-test"] = shoal_image(image_venv, tmp_path / "bare-app")
    kubelet.images["example.org/email-worker:1"] = shoal_image(worker_image_venv, app, target="worker")
    kubelet.namespaces.add(namespace)  # type: ignore[union-attr]
    def state() -> dict[str, Any]:
        return {"venv": tree_state(image_venv), "worker venv": tree_state(worker_image_venv),
                "app": tree_state(app), "bare": tree_state(tmp_path / "bare-app")}

    before = state()

    ns = f"--namespace={namespace}"
    kubectl.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": db_url}},
                   operator_deployment(namespace),
                   {"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "mail"},
                    "spec": {"databaseSecretRef": {"name": "db"},
                             "worker": {"image": "example.org/email-worker:1", "tasks": ["email_worker.tasks"]},
                             "retention": {"succeededSeconds": 3600},
                             "autoscaling": {"minReplicas": 1, "maxReplicas": 1}}}], ns)

    async def worker_ready() -> bool:
        dep = kubectl("get", "deployment", "mail-workers", ns, "-o", "json", check=False)
        return dep.returncode == 0 and json.loads(dep.stdout).get("status", {}).get("readyReplicas") == 1

    try:
        await eventually(worker_ready, timeout=60, interval=0.3)
    except AssertionError:
        raise AssertionError(dump(kubelet)[-8000:]) from None
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SELECT shoal.enqueue($1, 'email.report', '{\"to\": \"a@b.c\"}'::jsonb)",
                           f"{namespace}.mail")

        async def done() -> Any:
            return await conn.fetchval("SELECT state FROM shoal.jobs WHERE task = 'email.report'") == "succeeded"

        try:
            await eventually(done, timeout=30, interval=0.2)
        except AssertionError:
            row = await conn.fetchrow("SELECT state, attempts, last_error FROM shoal.jobs")
            raise AssertionError(f"{dict(row or {})}\n{dump(kubelet)[-8000:]}") from None
    finally:
        await conn.close()

    (worker,) = kubelet.running(namespace, **{"shoal.dev/queue": "mail"})
    (operator,) = kubelet.running(namespace, app="shoal-operator")
    tmp = worker.dir / "volumes" / "tmp"
    report = json.loads((tmp / "report.json").read_text())
    assert report["home"] == report["tmpdir"] == str(tmp) and Path(report["scratch"]).parent == tmp
    assert (tmp / ".cache" / "email_worker" / "state").read_text() == "y"
    assert report["cwd"] == str(app) and report["pythonpath"] == str(app)  # WORKDIR and PYTHONPATH: /app
    wv = worker_image_venv
    assert report["prefix"] == str(wv) and report["shoal"].startswith(str(wv))  # the wheel
    assert report["argv0"] == str(wv / "bin" / "shoal") and report["no_bytecode"] is True
    assert report["payload"] == {"to": "a@b.c"}

    # The operator: the Dockerfile's entrypoint and ENV, the Deployment's args, its own ports.
    assert operator.argv[:5] == (str(image_venv / "bin" / "shoal"), "operator", "--standalone", "--namespace",
                                 namespace)
    env = proc_env(operator.pids[0])
    assert env["HOME"] == env["TMPDIR"] == str(operator.dir / "volumes" / "tmp")
    assert env["PATH"].startswith(f"{image_venv}/bin:") and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOSTNAME"] == operator.name and "PYTEST_CURRENT_TEST" not in env

    # Stop everything (the Queue first, while its operator can still finalise it), then
    # nothing in the image (venv, /app) may have changed: only the pods' /tmp was written.
    kubectl("delete", "queue", "mail", ns, "--wait=true", "--timeout=60s")
    kubectl("delete", "deployment", "shoal-operator", ns)

    async def all_gone() -> bool:
        return not kubelet.running(namespace)

    await eventually(all_gone, timeout=60, interval=0.3)
    after = state()
    for part in before:
        changed = sorted(set(before[part].items()) ^ set(after[part].items()))
        assert not changed, f"{part} was written to: {changed[:20]}"
    assert not any(p.name == "__pycache__" for p in app.rglob("*"))


def test_the_worker_image_has_no_operator_stack_and_says_so(worker_image_venv: Path) -> None:
    """`pip install shoal` (the worker target) runs workers without kopf, the kubernetes client or
    aiohttp; `shoal operator` and `shoal console` there name the extra to install."""
    python = worker_image_venv / "bin" / "python"
    missing = subprocess.run([python, "-c", "import importlib.util as u; "
                              "print([m for m in ('kopf', 'kubernetes', 'aiohttp') if u.find_spec(m)])"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert missing.stdout.strip() == "[]"
    shoal = worker_image_venv / "bin" / "shoal"
    assert subprocess.run([shoal, "worker", "--help"], capture_output=True, timeout=60).returncode == 0
    for command, extra in (("operator", "operator"), ("console", "console")):
        proc = subprocess.run([shoal, command, "--standalone"] if command == "operator" else [shoal, command],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "SHOAL_DATABASE_URL":
                                                                                "postgresql://u@127.0.0.1:1/x"})
        assert proc.returncode == 2, proc.stderr
        assert f"pip install 'shoal[{extra}]'" in proc.stderr, proc.stderr
