"""The Kubernetes emulator served from a thread, a kubeconfig for it, kubectl, and `shoal operator`.

Shared by the end-to-end tests (tests/k8s/conftest.py) and the benchmarks (bench/run.py,
bench/autoscale_reaction.py). Needs the dev dependencies kmock and PyYAML.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import yaml

from shoal.testing.k8s.emulator import Emulator


class EmulatorThread:
    """The emulator and its HTTP server, running in an event loop of their own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="k8s-emulator", daemon=True)
        self.emulator: Emulator | None = None
        self.server: kmock.Server | None = None
        self._stack = contextlib.AsyncExitStack()

    def start(self) -> str:
        self.thread.start()
        self.call(self._start)
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def _start(self) -> None:
        self.emulator = await self._stack.enter_async_context(Emulator())
        self.server = await self._stack.enter_async_context(kmock.Server(self.emulator, host="127.0.0.1"))

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run ``fn`` in the emulator's loop (awaiting it if it returns an awaitable)."""

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        future: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._cancel_the_rest, timeout=10)
        with contextlib.suppress(Exception):
            self.call(self._stack.aclose, timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _cancel_the_rest(self) -> None:
        """End the requests still open (watches of clients that are gone wait for an event that
        may never come), so that the server shuts down at once and nothing outlives the loop."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                      "namespace": "default"}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Kubectl:
    """Run the real kubectl binary against the test cluster."""

    binary: Path
    kubeconfig: Path

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, KUBECONFIG=str(self.kubeconfig)))
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, manifest: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]],
              *args: str) -> subprocess.CompletedProcess[str]:
        """Apply a file/folder path, a YAML string, or manifest dict(s). No OpenAPI: --validate=false."""
        if isinstance(manifest, Path):
            return self("apply", "--validate=false", "-f", str(manifest), *args)
        if isinstance(manifest, Mapping):
            text = yaml.safe_dump(dict(manifest))
        elif isinstance(manifest, str):
            text = manifest
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifest])
        return self("apply", "--validate=false", "-f", "-", *args, input=text)


@dataclass
class OperatorProcess:
    """A ``kopf run`` subprocess; its combined output goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    _log_file: Any = field(repr=False, default=None)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM (kopf exits gracefully), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode


def start_operator(kubeconfig: Path, log_dir: Path, args: Sequence[str], env: dict[str, str] | None = None,
                   label: str = "op", cwd: Path | None = None) -> OperatorProcess:
    """``python -m shoal.cli operator ARGS`` with fast resync intervals; output in a log file."""
    log_path = log_dir / f"{label}-{uuid.uuid4().hex[:6]}.log"
    log_file = log_path.open("wb")
    full_env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "shoal.cli", "--log-level", "debug", "operator", "--health-port", "0",
           "--metrics-port", "0", "--resync-interval", "1", "--cron-interval", "0.3", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return OperatorProcess(proc=proc, log_path=log_path, _log_file=log_file)
