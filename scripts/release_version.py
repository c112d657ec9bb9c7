"""Print the release version after checking that every place naming it agrees.

pyproject.toml's `version` is the source; the chart's `version` and `appVersion` (the image tag the
chart deploys by default) must equal it, and so must the git tag being released (`--tag v0.1.0`),
so a release can never publish a chart that deploys an image of another version.

    python scripts/release_version.py                 # prints 0.1.0, or exits 1 naming the mismatch
    python scripts/release_version.py --tag v0.1.0    # the release workflow's check
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "shoal" / "Chart.yaml"


def chart_field(name: str) -> str:
    found = re.search(rf"^{name}:\s*\"?([^\"\s]+)\"?\s*$", CHART.read_text(), re.MULTILINE)
    if not found:
        raise SystemExit(f"{CHART.relative_to(ROOT)}: no `{name}:` line")
    return found.group(1)


def mismatches(tag: str | None) -> tuple[str, list[str]]:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    found = {"charts/shoal/Chart.yaml version": chart_field("version"),
             "charts/shoal/Chart.yaml appVersion": chart_field("appVersion")}
    if tag is not None:
        found["git tag"] = tag.removeprefix("refs/tags/").removeprefix("v")
    return version, [f"{where} is {value!r}, pyproject.toml's version is {version!r}: set it to {version!r}"
                     for where, value in found.items() if value != version]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="the git tag being released (v1.2.3 or refs/tags/v1.2.3)")
    args = parser.parse_args()
    version, problems = mismatches(args.tag)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
