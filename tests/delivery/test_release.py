"""Release readiness (issue 16, item 6): what PyPI, GHCR and a chart repository would publish agrees
with itself, and the workflows that publish it are valid (they cannot run here: actionlint checks them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import shoal

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
VERSION_SCRIPT = REPO_ROOT / "scripts" / "release_version.py"


def project() -> dict:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel as `pip wheel .` builds it from a copy of the tree, and everything the build printed."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", ".shoal", "bench")
    shutil.copytree(REPO_ROOT, src, ignore=ignore, dirs_exist_ok=True)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-v",
                           "--disable-pip-version-check", "--wheel-dir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("shoal-*.whl")
    return wheel, proc.stdout + proc.stderr


def test_building_the_package_warns_of_nothing(built: tuple[Path, str]) -> None:
    """The deprecated license table made setuptools warn on every install; nothing may warn now."""
    _, output = built
    warnings = [line for line in output.splitlines() if re.search(r"Deprecat|Warning:", line)]
    assert not warnings, "\n".join(warnings)


def test_wheel_metadata_is_complete(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert re.search(r"^License-Expression: Apache-2.0$", meta, re.M)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE is not in the wheel"
    classifiers = re.findall(r"^Classifier: (.+)$", meta, re.M)
    assert "Programming Language :: Python :: 3.11" in classifiers and "Typing :: Typed" in classifiers
    urls = dict(line.split(", ", 1) for line in re.findall(r"^Project-URL: (.+)$", meta, re.M))
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    # Data files the package reads at run time ship with it.
    assert "shoal/py.typed" in names
    for path in (REPO_ROOT / "console" / "static").glob("*"):
        assert f"shoal/console/static/{path.name}" in names, f"console/static/{path.name} is not in the wheel"
    for path in (REPO_ROOT / "console" / "sql").glob("*.sql"):
        assert f"shoal/console/sql/{path.name}" in names, f"console/sql/{path.name} is not in the wheel"


def test_license_file_is_apache_2() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert project()["license"] == "Apache-2.0"


def test_version_is_one_value_everywhere() -> None:
    """`shoal --version`, `shoal.__version__`, the chart's version and appVersion (the image tag
    it deploys) all say pyproject's version."""
    version = project()["version"]
    assert shoal.__version__ == version
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "--version"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == f"shoal {version}"
    checked = subprocess.run([sys.executable, str(VERSION_SCRIPT), "--tag", f"v{version}"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == version
    chart = yaml.safe_load((REPO_ROOT / "charts" / "shoal" / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version


def test_a_tag_of_another_version_stops_the_release() -> None:
    checked = subprocess.run([sys.executable, str(VERSION_SCRIPT), "--tag", "refs/tags/v99.0.0"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert "git tag is '99.0.0'" in checked.stderr and project()["version"] in checked.stderr


def test_workflows_pass_actionlint() -> None:
    actionlint = Path(sys.executable).with_name("actionlint")
    assert actionlint.exists(), "actionlint is a dev dependency (pyproject.toml): run scripts/setup.sh"
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "release.yml"}
    proc = subprocess.run([str(actionlint), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_release_publishes_what_the_version_check_approved() -> None:
    """Every artifact is named by the checked version: the image tags, the chart package, and PyPI
    publishing runs with an OIDC token (trusted publishing), not a stored password."""
    jobs = yaml.safe_load((WORKFLOWS / "release.yml").read_text())["jobs"]
    check = next(step for step in jobs["version"]["steps"] if step.get("id") == "check")
    assert "scripts/release_version.py --tag" in check["run"]
    push = next(step for step in jobs["image"]["steps"] if "build-push-action" in step.get("uses", ""))
    assert push["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert "${{ needs.version.outputs.version }}" in push["with"]["tags"]
    chart_run = jobs["chart"]["steps"][-1]["run"]
    assert "helm push" in chart_run and "oci://" in chart_run and "VERSION" in chart_run
    assert jobs["chart"]["needs"] == ["version", "image"], "the chart must not point at an image not yet pushed"
    assert jobs["pypi"]["permissions"]["id-token"] == "write"
    assert any("pypa/gh-action-pypi-publish" in step.get("uses", "") for step in jobs["pypi"]["steps"])
    assert "password" not in str(jobs["pypi"])


def test_the_chart_describes_itself() -> None:
    """`helm show readme` and `helm show chart` give a chart repository what it lists: a README that
    covers every top-level value, an icon, a home page and the sources; `helm lint` asks for nothing."""
    from tools import helm

    chart_dir = REPO_ROOT / "charts" / "shoal"
    readme = subprocess.run([str(helm()), "show", "readme", str(chart_dir)], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in readme]
    assert not missing, f"charts/shoal/README.md does not mention {missing}"
    chart = yaml.safe_load(subprocess.run([str(helm()), "show", "chart", str(chart_dir)], capture_output=True,
                                          text=True, timeout=60, check=True).stdout)
    assert chart["icon"].startswith("https://") and chart["icon"].endswith("/charts/shoal/icon.svg")
    assert (chart_dir / "icon.svg").read_text().lstrip().startswith("<svg")
    assert chart["home"].startswith("https://") and chart["sources"]
    assert project()["urls"]["Source"] in chart["sources"], "the chart and the package name one repository"
    lint = subprocess.run([str(helm()), "lint", str(chart_dir), "--set", "database.url=postgresql://u:p@h/db"],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and "[INFO]" not in lint.stdout, lint.stdout
