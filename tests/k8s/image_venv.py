"""The shoal image without Docker: the wheel built and installed the way the Dockerfile does it.

- The build context is what the builder stage COPYs (read from the Dockerfile) into a temp
  copy of its WORKDIR; ``pip wheel . --no-deps`` builds the wheel there (the repo is never
  written to).
- The runtime stage's ``COPY --from=builder /opt/shoal /opt/shoal`` says where the venv
  lives; a fresh ``python -m venv`` stands in for it, and the wheel is installed with pip
  (``--no-deps``, bytecode compiled at install, as in the image).
- The runtime dependencies (pyproject's ``dependencies``, no extras, resolved recursively
  from the installed metadata) are linked in from the test environment's site-packages
  instead of downloaded: same versions, no network, and a module the image would lack
  (a dev-only import) fails here too. Links are per top-level name, so a namespace
  directory shared by several distributions (``google/``) brings its siblings along.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement

from .kubelet_image import SHOAL_PORT_FLAGS, Image, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def build_context(dest: Path) -> Path:
    """The builder stage's COPY lines, applied to ``dest`` (standing for its WORKDIR)."""
    builder = parse_dockerfile(DOCKERFILE.read_text(), stage="builder")
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info")
    for source, sources, target in builder.copies:
        assert not source, "the builder copies from the build context only"
        where = dest / os.path.relpath(target, builder.workdir)
        for pattern in sources:
            for found in sorted(glob.glob(str(REPO / pattern))):
                path = Path(found)
                if path.is_dir():
                    shutil.copytree(path, where, ignore=ignore, dirs_exist_ok=True)  # a directory's contents
                else:
                    where.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, where / path.name)
    return dest


def runtime_closure(name: str = "shoal") -> list[md.Distribution]:
    """The distributions ``pip install <name>`` would bring (no extras), from the installed metadata."""
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(req, ()) for req in md.distribution(name).requires or []]
    while todo:
        text, extras = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*extras, "")):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist
        todo += [(r, tuple(req.extras)) for r in dist.requires or []]
    return list(seen.values())


def build_image_venv(work: Path) -> Path:
    """Build the wheel and the image's venv under ``work``; returns the venv (``/opt/shoal``)."""
    src = build_context(work / "src")
    wheels = work / "wheels"
    try:
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, ".", cwd=src)
    except RuntimeError:  # no index to fetch the build backend from: build with the installed one
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, ".",
             cwd=src)
    (wheel,) = wheels.glob("shoal-*.whl")
    runtime = parse_dockerfile(DOCKERFILE.read_text())
    (venv_path,) = [dest for stage, _, dest in runtime.copies if stage == "builder"]
    venv = work / venv_path.strip("/").replace("/", "_")
    _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "--no-cache-dir", "--no-deps", "--no-index", wheel)
    site = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    ours = Path(sysconfig.get_path("purelib"))
    for dist in runtime_closure():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (ours / top).exists() and not (site / top).exists():
                (site / top).symlink_to(ours / top)
    _run(venv / "bin" / "shoal", "--help")  # as the Dockerfile's last RUN does
    return venv


def shoal_image(venv: Path, app: Path) -> Image:
    """The runtime stage as an Image: its venv at /opt/shoal, ``app`` at /app (WORKDIR, PYTHONPATH)."""
    runtime = parse_dockerfile(DOCKERFILE.read_text())
    (venv_path,) = [dest for stage, _, dest in runtime.copies if stage == "builder"]
    app.mkdir(parents=True, exist_ok=True)
    return Image(runtime, {venv_path: venv, runtime.workdir: app}, SHOAL_PORT_FLAGS)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file, directory and link under ``root`` (not following links): size and mtime."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            state[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return state
