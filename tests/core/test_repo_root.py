"""The repo root is safe to start Python in, without PYTHONSAFEPATH.

The root holds a folder named `operator` (pyproject.toml maps it onto `shoal.operator`), and a
Python started there has the root on sys.path before the standard library: `import operator`
(which asyncio, collections and dataclasses do) finds the folder. Its __init__.py then loads the
standard library's module in its place. Each test runs fresh interpreters in the repo root with
PYTHONSAFEPATH unset: a venv without Shoal, this venv (Shoal installed editable), pytest itself,
and a venv with Shoal's wheel installed the regular way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STDLIB_OPERATOR = str(Path(sysconfig.get_path("stdlib")) / "operator.py")

# What broke: "cannot import name 'eq' from 'operator'" as soon as asyncio was imported.
USES_OPERATOR = (
    "import asyncio, collections, dataclasses, operator, sys; "
    "assert operator.eq(1, 1) and operator.__file__ == sys.argv[1], operator.__file__; "
    "assert sys.modules['operator'] is operator"
)
# A venv's .pth files may import `operator` before the repo root joins sys.path (this one's
# editable-install finder does): forget it, and look it up again with the root on sys.path.
USES_OPERATOR_AFRESH = "import sys; del sys.modules['operator']; " + USES_OPERATOR
IMPORTS_SHOAL = (
    "import operator, sys, shoal.operator, shoal.operator.kube, shoal.cli; "
    "assert operator.__file__ == sys.argv[1], operator.__file__; "
    "assert shoal.operator.__name__ == 'shoal.operator' and shoal.operator.__file__ == sys.argv[2], "
    "shoal.operator.__file__; "
    "assert 'eq' not in vars(shoal.operator)"
)


def unsafe_env() -> dict[str, str]:
    """This environment, less what would keep the repo root off sys.path or point elsewhere."""
    drop = ("PYTHONSAFEPATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_in_root(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=REPO_ROOT, env=unsafe_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args} in the repo root failed:\n{proc.stdout}{proc.stderr}"
    return proc


def bin_python(env_dir: Path) -> str:
    return str(env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


def test_the_repo_root_comes_first_on_sys_path() -> None:
    """The premise: without PYTHONSAFEPATH, `-c` and `-m` put the repo root before the stdlib."""
    proc = run_in_root(sys.executable, "-c", "import os, sys; print(os.path.realpath(sys.path[0] or '.'))")
    assert Path(proc.stdout.strip()) == REPO_ROOT
    assert (REPO_ROOT / "operator" / "__init__.py").is_file()


def test_a_python_without_shoal(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    venv.create(plain, with_pip=False)
    proc = subprocess.run([bin_python(plain), "-c", "import shoal"], cwd=tmp_path, env=unsafe_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "No module named 'shoal'" in proc.stderr
    run_in_root(bin_python(plain), "-c", USES_OPERATOR, STDLIB_OPERATOR)


def test_this_venv_with_the_editable_install() -> None:
    run_in_root(sys.executable, "-c", USES_OPERATOR, STDLIB_OPERATOR)
    run_in_root(sys.executable, "-c", USES_OPERATOR_AFRESH, STDLIB_OPERATOR)
    run_in_root(sys.executable, "-c", IMPORTS_SHOAL, STDLIB_OPERATOR, str(REPO_ROOT / "operator" / "__init__.py"))
    assert "usage: shoal" in run_in_root(sys.executable, "-m", "shoal.cli", "--help").stdout


def test_pytest_started_in_the_repo_root() -> None:
    proc = run_in_root(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                       "tests/core/test_repo_root.py")
    assert "test_pytest_started_in_the_repo_root" in proc.stdout


def test_a_regular_install_of_the_wheel(tmp_path: Path) -> None:
    """`pip wheel .` and a non-editable install: the Docker image's way."""
    source = tmp_path / "source"  # a copy: building in the repo would leave build/ there
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for name in ["pyproject.toml", project["project"]["readme"]]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    for folder in project["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--quiet", "--wheel-dir", str(wheels),
         str(source)],
        env={**unsafe_env(), "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}{build.stderr}"
    (wheel,) = wheels.glob("shoal-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"shoal/operator/__init__.py", "shoal/cli/__init__.py", "shoal/cli/__main__.py"} <= names
    assert not [n for n in names if n.startswith("shoal/sql/current")], "sql/current/ is for readers, not shipped"
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", bin_python(target), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, f"pip install failed:\n{install.stdout}{install.stderr}"
    site = Path(subprocess.run([bin_python(target), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Shoal's dependencies come from this venv, appended after the wheel's own site-packages.
    (site / "zz_shoal_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = site / "shoal" / "operator" / "__init__.py"
    assert installed.is_file()
    run_in_root(bin_python(target), "-c", IMPORTS_SHOAL, STDLIB_OPERATOR, str(installed))
    run_in_root(bin_python(target), "-c", USES_OPERATOR, STDLIB_OPERATOR)
    assert "usage: shoal" in run_in_root(bin_python(target), "-m", "shoal.cli", "--help").stdout


def test_operator_is_the_only_top_level_package_named_like_a_standard_module() -> None:
    """A new top-level folder named like a stdlib module would need the same care as operator/."""
    packages = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages & set(sys.stdlib_module_names) == {"operator"}
