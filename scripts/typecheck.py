"""Type-check `shoal` as it is installed, with mypy.

mypy cannot follow the editable install's import hook, so run on the repo's folders it sees each
folder alone and every `shoal.*` import as untyped (`Any`): a wrong type across packages passed.
This lays the folders out as a regular install does (scripts/lint_imports.py's `lay_out`), runs
`mypy -p shoal` there with the repo's [tool.mypy] settings, and maps the paths it prints back to
the repo's folders. Options are passed on.

    PYTHONSAFEPATH=1 .venv/bin/python scripts/typecheck.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lint_imports import ROOT, lay_out  # noqa: E402


def main(argv: list[str]) -> int:
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    # Longest package first, so shoal/worker/x.py maps to worker/x.py, not core/worker/x.py.
    folders = sorted(((p.replace(".", "/") + "/", f + "/") for p, f in package_dir.items()),
                     key=lambda pf: -len(pf[0]))
    with tempfile.TemporaryDirectory(prefix="shoal-typecheck-") as tmp:
        lay_out(Path(tmp))
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "shoal", *argv]
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
    for line in (result.stdout + result.stderr).splitlines():
        for installed, folder in folders:
            if line.startswith(installed):
                line = folder + line[len(installed):]
                break
        print(line)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
