"""Install the peer queues into bench/.peers/, away from the project's venv. Idempotent.

    python bench/setup_peers.py          # or implicitly: python bench/run.py

- bench/.peers/venv: `python -m venv`, then pip install pgqueuer, procrastinate (+ asyncpg).
- bench/.peers/node: npm install graphile-worker, pg-boss — skipped, with a message, when
  node/npm are absent.

A stamp file records what was installed; a second call with the same pins only checks
that the packages import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / ".peers"
PY_VENV = PEERS / "venv"
NODE_DIR = PEERS / "node"

PY_REQUIREMENTS = ["pgqueuer>=1.6,<1.7", "procrastinate>=3.10,<3.11", "asyncpg>=0.29"]
PY_IMPORTS = {"pgqueuer": "pgqueuer", "procrastinate": "procrastinate"}
# Preferred spec first, then fallbacks. graphile-worker 0.18 and pg-boss 12 declare
# node >= 22 in "engines" but import and run on Node 20 (npm only warns: EBADENGINE).
NODE_PACKAGES = {
    "graphile-worker": ["graphile-worker@^0.18.0", "graphile-worker@^0.16.0"],
    "pg-boss": ["pg-boss@^12.0.0", "pg-boss@^10.0.0"],
}

Log = Callable[[str], None]


@dataclass
class PeerEnv:
    python: Path | None = None
    node: str | None = None
    node_dir: Path | None = None
    python_versions: dict[str, str] = field(default_factory=dict)
    node_versions: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # peer -> reason


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _venv_python() -> Path:
    return PY_VENV / "bin" / "python"


def _python_versions(py: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        f"names = {list(PY_IMPORTS)!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    # cwd=PEERS: never let the repository root (whose `operator/` folder shadows the
    # standard library module) land on sys.path.
    res = _run([str(py), "-c", code], cwd=PEERS, timeout=120)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def ensure_python(env: PeerEnv, log: Log) -> None:
    py = _venv_python()
    stamp = PEERS / "python.stamp"
    wanted = json.dumps(PY_REQUIREMENTS)
    if not py.exists():
        log(f"creating {PY_VENV.relative_to(BENCH.parent)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(PY_VENV)
    if not (stamp.exists() and stamp.read_text() == wanted):
        log(f"pip install {' '.join(PY_REQUIREMENTS)} (into bench/.peers/venv)")
        res = _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PY_REQUIREMENTS],
                   cwd=PEERS)
        if res.returncode != 0:
            reason = f"pip install failed: {res.stderr.strip()[-400:]}"
            for peer in PY_IMPORTS:
                env.unavailable[peer] = reason
            return
        stamp.write_text(wanted)
    env.python = py
    env.python_versions = _python_versions(py)
    for peer in PY_IMPORTS:
        if peer not in env.python_versions:
            env.unavailable[peer] = "not importable from bench/.peers/venv"


def _node_versions(node_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in NODE_PACKAGES:
        pkg = node_dir / "node_modules" / name / "package.json"
        if pkg.exists():
            out[name] = json.loads(pkg.read_text())["version"]
    return out


def ensure_node(env: PeerEnv, log: Log) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        reason = "node/npm not found on PATH: Node peers skipped"
        log(reason)
        for peer in NODE_PACKAGES:
            env.unavailable[peer] = reason
        return
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    pkg = NODE_DIR / "package.json"
    if not pkg.exists():
        pkg.write_text(json.dumps({"name": "shoal-bench-peers", "private": True, "version": "0.0.0"}, indent=2))
    stamp = NODE_DIR / "node.stamp"
    wanted = json.dumps(NODE_PACKAGES)
    if not (stamp.exists() and stamp.read_text() == wanted):
        first = [specs[0] for specs in NODE_PACKAGES.values()]
        log(f"npm install {' '.join(first)} (into bench/.peers/node)")
        res = _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *first], cwd=NODE_DIR)
        if res.returncode != 0:
            log(f"npm install failed, trying fallbacks: {res.stderr.strip()[-300:]}")
            for name, specs in NODE_PACKAGES.items():
                for spec in specs:
                    res = _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", spec], cwd=NODE_DIR)
                    if res.returncode == 0:
                        break
                else:
                    env.unavailable[name] = f"npm install failed: {res.stderr.strip()[-300:]}"
        stamp.write_text(wanted)
    env.node = node
    env.node_dir = NODE_DIR
    env.node_versions = _node_versions(NODE_DIR)
    for name in NODE_PACKAGES:
        if name not in env.node_versions:
            env.unavailable.setdefault(name, "not installed in bench/.peers/node")


def ensure_peers(log: Log = print, python: bool = True, node: bool = True) -> PeerEnv:
    """The peers asked for (Python ones, Node ones): a run of Shoal and the bare loop installs neither."""
    PEERS.mkdir(parents=True, exist_ok=True)
    env = PeerEnv()
    if python:
        ensure_python(env, log)
    if node:
        ensure_node(env, log)
    return env


def main() -> int:
    env = ensure_peers(lambda msg: print(f"[setup] {msg}", flush=True))
    print(f"python peers: {env.python_versions or 'none'}")
    print(f"node peers:   {env.node_versions or 'none'}")
    for peer, reason in env.unavailable.items():
        print(f"unavailable:  {peer}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
