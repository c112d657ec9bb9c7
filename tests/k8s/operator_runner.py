"""Start the real `shoal operator` as subprocesses against the test cluster (emulator or real)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, OperatorProcess


def start_operator(kubeconfig: Path, log_dir: Path, args: Sequence[str], env: dict[str, str] | None = None,
                   label: str = "op") -> OperatorProcess:
    """``python -m shoal.cli operator ARGS`` with fast resync intervals; output in a log file."""
    log_path = log_dir / f"{label}-{uuid.uuid4().hex[:6]}.log"
    log_file = log_path.open("wb")
    full_env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "shoal.cli", "--log-level", "debug", "operator", "--health-port", "0",
           "--metrics-port", "0", "--resync-interval", "1", "--cron-interval", "0.3", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return OperatorProcess(proc=proc, log_path=log_path, _log_file=log_file)


@pytest.fixture
def operators(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: ``operators("--standalone", "--namespace", ns, env=..., label=...)``; stopped at teardown."""
    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, label: str = "op") -> OperatorProcess:
        op = start_operator(kubeconfig, tmp_path, args, env, label)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def logs(*ops: OperatorProcess) -> str:
    """The tail of each operator's log, for failure messages."""
    return "\n".join(f"--- {op.log_path.name} (exit {op.proc.poll()}):\n{op.log[-3000:]}" for op in ops)


def alive(*ops: OperatorProcess) -> None:
    for op in ops:
        assert op.proc.poll() is None, f"operator exited early:\n{logs(op)}"


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


