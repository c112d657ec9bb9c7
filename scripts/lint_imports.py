"""Check the import contracts of pyproject.toml ([tool.importlinter]) with `lint-imports`.

import-linter reads a package's modules from its folder, but `shoal` is assembled from several
folders (pyproject.toml's package-dir: core/ is `shoal`, worker/ is `shoal.worker`, cli/ is
`shoal.cli`, ...), which the editable install joins only at import time: run in the repo as it is,
`lint-imports` sees core/ alone. This script lays the folders out as a regular install does, in a
temporary directory (copies of the .py files, so line numbers match), and runs `lint-imports` on
that layout with the repo's configuration. Options are passed on (e.g. --verbose, --contract ID).

    PYTHONSAFEPATH=1 .venv/bin/python scripts/lint_imports.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lay_out(target: Path) -> None:
    """Copy each mapped folder's Python files to where its package lives in a regular install."""
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]

    def not_python(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or (not n.endswith(".py") and not Path(folder, n).is_dir())]

    for package, folder in sorted(package_dir.items()):  # a package before its subpackages
        shutil.copytree(ROOT / folder, target.joinpath(*package.split(".")), ignore=not_python, dirs_exist_ok=True)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="shoal-import-contracts-") as tmp:
        lay_out(Path(tmp))
        env = {**os.environ, "PYTHONSAFEPATH": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        run_lint_imports = ("import sys; from importlinter.cli import lint_imports_command; "
                            "sys.argv[0] = 'lint-imports'; sys.exit(lint_imports_command())")
        # -W: platformdirs (under import-linter) warns on a machine without a login session.
        command = [sys.executable, "-W", "ignore:XDG_RUNTIME_DIR", "-c", run_lint_imports,
                   "--no-cache", "--no-logo", *argv]
        return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
