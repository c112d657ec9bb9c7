#!/usr/bin/env python3
"""Copy the CRDs from crds/*.yaml into the Helm chart's crds/ folder, byte for byte.

crds/ at the repository root is the single source of the Shoal CRDs; the chart ships a
copy because Helm installs CRDs only from a chart's own crds/ folder. Files in the chart's
crds/ that are not in crds/ are removed, except the ones the chart owns itself (the kopf
peering CRDs, which are kopf's, not Shoal's).

    python scripts/sync_chart_crds.py          # copy
    python scripts/sync_chart_crds.py --check  # exit 1 and list the differences if out of sync
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "crds"
CHART_CRDS_DIR = REPO_ROOT / "charts" / "shoal" / "crds"
# CRDs that belong to the chart only (not generated from crds/): never touched here.
CHART_OWNED = frozenset({"kopf-peering.yaml"})


def source_files() -> dict[str, Path]:
    return {p.name: p for p in sorted(SOURCE_DIR.glob("*.yaml"))}


def differences() -> list[str]:
    """What --check reports: one line per missing, changed or stale file in the chart."""
    src = source_files()
    problems: list[str] = []
    if not src:
        problems.append(f"no CRDs found in {SOURCE_DIR.relative_to(REPO_ROOT)}/*.yaml")
    for name, path in src.items():
        if name in CHART_OWNED:
            problems.append(f"crds/{name} clashes with a chart-owned CRD file of the same name")
            continue
        copy = CHART_CRDS_DIR / name
        if not copy.is_file():
            problems.append(f"charts/shoal/crds/{name} is missing")
        elif copy.read_bytes() != path.read_bytes():
            problems.append(f"charts/shoal/crds/{name} differs from crds/{name}")
    for copy in sorted(CHART_CRDS_DIR.glob("*.yaml")):
        if copy.name not in src and copy.name not in CHART_OWNED:
            problems.append(f"charts/shoal/crds/{copy.name} has no source in crds/ (stale)")
    return problems


def sync() -> list[str]:
    """Copy every crds/*.yaml into the chart and delete stale copies; return what changed."""
    src = source_files()
    if not src:
        raise SystemExit(f"error: no CRDs found in {SOURCE_DIR}/*.yaml; nothing to sync")
    CHART_CRDS_DIR.mkdir(parents=True, exist_ok=True)
    changed: list[str] = []
    for name, path in src.items():
        if name in CHART_OWNED:
            raise SystemExit(f"error: crds/{name} clashes with the chart-owned file of the same name")
        copy = CHART_CRDS_DIR / name
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)
            changed.append(f"copied crds/{name}")
    for copy in sorted(CHART_CRDS_DIR.glob("*.yaml")):
        if copy.name not in src and copy.name not in CHART_OWNED:
            copy.unlink()
            changed.append(f"removed stale charts/shoal/crds/{copy.name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python scripts/sync_chart_crds.py", file=sys.stderr)
            return 1
        print("chart CRDs are in sync with crds/")
        return 0
    for line in sync() or ["chart CRDs already in sync"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
