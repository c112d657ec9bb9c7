"""The shoal image without Docker: the wheel built and installed the way the Dockerfile does it.

- The build context is what the builder stage COPYs (read from the Dockerfile) into a temp
  copy of its WORKDIR; ``pip wheel . --no-deps`` builds the wheel there (the repo is never
  written to).
- The target stage's ``COPY --from=builder… /opt/shoal /opt/shoal`` says where the venv
  lives; a fresh ``python -m venv`` stands in for it, and the wheel is installed with pip
  (``--no-deps``, bytecode compiled at install, as in the image).
- The runtime dependencies (pyproject's ``dependencies`` plus the target's extras, ``TARGET_EXTRAS``:
  none for ``worker``, ``operator`` and ``console`` for ``operator``, resolved recursively
  from the installed metadata) are linked in from the test environment's site-packages
  instead of downloaded: same versions, no network, and a module the image would lack
  (a dev-only import) fails here too. Links are per top-level name, so a namespace
  directory shared by several distributions (``google/``) brings its siblings along.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from shoal.testing.closure import runtime_closure

from .kubelet_image import SHOAL_PORT_FLAGS, Image, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# The Dockerfile's build targets and the extras each one's venv installs (tests/delivery/test_dockerfile.py
# checks these against the Dockerfile's RUN lines). `operator` is the default target, the chart's image.
TARGET_EXTRAS: dict[str, tuple[str, ...]] = {"worker": (), "operator": ("operator", "console")}


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


def _venv_path(target: str) -> str:
    runtime = parse_dockerfile(DOCKERFILE.read_text(), stage=target)
    (venv_path,) = [dest for stage, _, dest in runtime.copies if stage.startswith("builder")]
    return venv_path


def build_image_venv(work: Path, target: str = "operator") -> Path:
    """Build the wheel and the ``target`` image's venv under ``work``; returns the venv (``/opt/shoal``)."""
    src = build_context(work / "src")
    wheels = work / "wheels"
    try:
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, ".", cwd=src)
    except RuntimeError:  # no index to fetch the build backend from: build with the installed one
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, ".",
             cwd=src)
    (wheel,) = wheels.glob("shoal-*.whl")
    venv = work / _venv_path(target).strip("/").replace("/", "_")
    _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "--no-cache-dir", "--no-deps", "--no-index", wheel)
    site = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    ours = Path(sysconfig.get_path("purelib"))
    for dist in runtime_closure(extras=TARGET_EXTRAS[target]):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (ours / top).exists() and not (site / top).exists():
                (site / top).symlink_to(ours / top)
    _run(venv / "bin" / "shoal", "--help")  # as the Dockerfile's last RUN does
    return venv


def shoal_image(venv: Path, app: Path, target: str = "operator") -> Image:
    """The ``target`` stage as an Image: its venv at /opt/shoal, ``app`` at /app (WORKDIR, PYTHONPATH)."""
    runtime = parse_dockerfile(DOCKERFILE.read_text(), stage=target)
    app.mkdir(parents=True, exist_ok=True)
    return Image(runtime, {_venv_path(target): venv, runtime.workdir: app}, SHOAL_PORT_FLAGS)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file, directory and link under ``root`` (not following links): size and mtime."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            state[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return state
