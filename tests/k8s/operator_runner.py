"""Start the real `shoal operator` as subprocesses against the test cluster (emulator or real)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from shoal.testing.k8s import cluster

from .conftest import REPO, OperatorProcess


def start_operator(kubeconfig: Path, log_dir: Path, args: Sequence[str], env: dict[str, str] | None = None,
                   label: str = "op") -> OperatorProcess:
    """shoal.testing's ``start_operator``, run in the repo root."""
    return cluster.start_operator(kubeconfig, log_dir, args, env, label, cwd=REPO)


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


