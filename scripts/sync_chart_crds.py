#!/usr/bin/env python3
"""Keep the CRDs in sync: the Kubernetes-typed blocks inside crds/*.yaml, and the chart's copies.

crds/ at the repository root is the single source of the Shoal CRDs. Two things are derived
from it, and this script writes (or, with ``--check``, verifies) both:

1. **Kubernetes schemas inside the CRDs.** A Queue's ``spec.worker`` embeds Kubernetes types
   (resources, env, tolerations, affinity, volumes, ...). Their structural schemas are not
   written by hand: a property whose first line is a marker comment

       # kubernetes: io.k8s.api.core.v1.Affinity ...
       # kubernetes: []io.k8s.api.core.v1.Toleration ...   (a list of them)

   gets the lines below the marker (up to the property's end) generated from the Kubernetes
   OpenAPI schema that the ``kubernetes-validate`` package ships, for the oldest Kubernetes the
   chart supports (Chart.yaml ``kubeVersion``): so every field the CRD accepts is one every
   supported cluster understands, and a typo (``requets:``) is refused by the API server.
   Converted to what a CRD allows: ``$ref`` inlined, nullable types made plain, quantities
   and int-or-string values as ``x-kubernetes-int-or-string`` (quantities with Kubernetes'
   pattern), an embedded ObjectMeta reduced to labels and annotations, and no descriptions,
   defaults or list/map-type markers (``kubectl explain pod.spec`` documents the fields; the
   API server defaults them on the Deployment). Hand-written keys of such a property (its
   ``description``) go above the marker.

2. **The chart's copies.** The chart installs the Shoal CRDs from templates/crds.yaml, which
   reads byte-for-byte copies in charts/shoal/files/crds/ (templates, not the chart's crds/
   folder, so that `helm upgrade` updates them: Helm never upgrades crds/). Files there that
   are not in crds/ are removed. The chart's crds/ folder keeps only what the chart owns
   itself (kopf's peering CRDs, which the chart's own ClusterKopfPeering needs installed
   before the templates); a Shoal CRD left there is an error.

    python scripts/sync_chart_crds.py          # regenerate the typed blocks and copy
    python scripts/sync_chart_crds.py --check  # exit 1 and list the differences if out of sync
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "crds"
CHART_DIR = REPO_ROOT / "charts" / "shoal"
CHART_FILES_DIR = CHART_DIR / "files" / "crds"  # read by templates/crds.yaml
CHART_CRDS_DIR = CHART_DIR / "crds"  # Helm's install-only folder: the chart's own CRDs only
# CRDs that belong to the chart only (not generated from crds/): never touched here.
CHART_OWNED = frozenset({"kopf-peering.yaml"})

MARKER = re.compile(r"^(?P<indent> *)# kubernetes: (?P<list>\[\])?(?P<type>io\.k8s\.[A-Za-z0-9_.]+)\b.*$")
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Kubernetes' own check of a quantity's spelling (apimachinery resource.Quantity; controller-gen's).
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
FORMATS = frozenset({"int32", "int64"})  # the only formats the core types use that a CRD keeps


# --------------------------------------------------------------------------- Kubernetes schemas


def kubernetes_version() -> str:
    """The oldest Kubernetes the chart supports (Chart.yaml kubeVersion, e.g. '>=1.28.0-0' → '1.28.0')."""
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    found = re.search(r"(\d+)\.(\d+)", chart["kubeVersion"])
    if not found:
        raise SystemExit(f"error: cannot read the oldest Kubernetes version from kubeVersion {chart['kubeVersion']!r}")
    return f"{found.group(1)}.{found.group(2)}.0"


@cache
def definitions(version: str) -> dict[str, Any]:
    """The core definitions of Kubernetes `version`, from the kubernetes-validate package."""
    try:
        root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    except ModuleNotFoundError:
        raise SystemExit("error: the Kubernetes schemas come from kubernetes-validate: "
                         "pip install -e '.[dev]'") from None
    path = root / f"v{version}-local-strict" / "_definitions.json"
    if not path.is_file():
        raise SystemExit(f"error: kubernetes-validate has no schemas for Kubernetes {version}; upgrade it")
    return json.loads(path.read_text())["$defs"]  # type: ignore[no-any-return]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def structural(node: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Kubernetes JSON schema node as a CRD's structural schema (see the module docstring)."""
    if "$ref" in node:
        name = _ref_name(node["$ref"])
        if name in (QUANTITY, INT_OR_STRING):
            out: dict[str, Any] = {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                   "x-kubernetes-int-or-string": True}
            if name == QUANTITY:
                out["pattern"] = QUANTITY_PATTERN
            return out
        if name == OBJECT_META:  # an embedded template's metadata: only these are honoured
            strings = {"type": "object", "additionalProperties": {"type": "string"}}
            return {"type": "object", "properties": {"annotations": dict(strings), "labels": dict(strings)}}
        if name in seen:
            raise SystemExit(f"error: {name} is recursive; a CRD schema cannot express it")
        if name not in defs:
            raise SystemExit(f"error: no definition {name} in the Kubernetes schemas")
        return structural(defs[name], defs, (*seen, name))
    out = {}
    types = node.get("type")
    if types is not None:
        plain = [t for t in (types if isinstance(types, list) else [types]) if t != "null"]
        if len(plain) != 1:
            raise SystemExit(f"error: cannot express the type {types!r} structurally")
        out["type"] = plain[0]
    if node.get("format") in FORMATS:
        out["format"] = node["format"]
    if node.get("enum"):
        out["enum"] = [v for v in node["enum"] if v is not None]
    if node.get("required"):
        out["required"] = list(node["required"])
    if "properties" in node:
        out["properties"] = {k: structural(v, defs, seen) for k, v in sorted(node["properties"].items())}
    if "items" in node:
        out["items"] = structural(node["items"], defs, seen)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(node["additionalProperties"], defs, seen)
    unknown = set(node) - {"type", "format", "enum", "required", "properties", "items", "additionalProperties",
                           "description", "default", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                           "x-kubernetes-map-type", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key",
                           "x-kubernetes-unions"}
    if unknown:
        raise SystemExit(f"error: unexpected schema keys {sorted(unknown)}: teach scripts/sync_chart_crds.py them")
    if "type" not in out:
        raise SystemExit(f"error: a Kubernetes schema node without a type: {node}")
    return out


def kubernetes_schema(type_name: str, as_list: bool, version: str) -> dict[str, Any]:
    """The structural schema of a Kubernetes type (or a list of it) for a CRD."""
    schema = structural({"$ref": f"#/$defs/{type_name}"}, definitions(version))
    return {"type": "array", "items": schema} if as_list else schema


class _Dumper(yaml.SafeDumper):
    """Block style, except short lists of scalars (``required: [name, mountPath]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(x, str | int | float | bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _dump(schema: dict[str, Any], indent: str) -> list[str]:
    text = yaml.dump(schema, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    return [f"{indent}{line}" if line else line for line in text.splitlines()]


def generate_kubernetes_blocks(text: str, version: str) -> str:
    """`text` (a CRD file) with every marked block regenerated for Kubernetes `version`."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if not marker:
            out.append(lines[i])
            i += 1
            continue
        indent, type_name, as_list = marker["indent"], marker["type"], bool(marker["list"])
        shown = f"{'[]' if as_list else ''}{type_name}"
        out.append(f"{indent}# kubernetes: {shown} (Kubernetes {version}, generated by "
                   "scripts/sync_chart_crds.py: do not edit below)")
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent)
                                  and not MARKER.match(lines[i])):
            i += 1  # the old block: every line indented at least as deep as the marker
        out += _dump(kubernetes_schema(type_name, as_list, version), indent)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


# --------------------------------------------------------------------------- sync and check


def source_files() -> dict[str, Path]:
    return {p.name: p for p in sorted(SOURCE_DIR.glob("*.yaml"))}


def differences() -> list[str]:
    """What --check reports: one line per stale typed block and missing, changed or stale chart file."""
    src = source_files()
    problems: list[str] = []
    if not src:
        problems.append(f"no CRDs found in {SOURCE_DIR.relative_to(REPO_ROOT)}/*.yaml")
    version = kubernetes_version()
    for name, path in src.items():
        text = path.read_text()
        if generate_kubernetes_blocks(text, version) != text:
            problems.append(f"crds/{name}: its Kubernetes-typed blocks differ from the Kubernetes {version} schemas")
        if name in CHART_OWNED:
            problems.append(f"crds/{name} clashes with a chart-owned CRD file of the same name")
            continue
        copy = CHART_FILES_DIR / name
        if not copy.is_file():
            problems.append(f"charts/shoal/files/crds/{name} is missing")
        elif copy.read_bytes() != path.read_bytes():
            problems.append(f"charts/shoal/files/crds/{name} differs from crds/{name}")
        if (CHART_CRDS_DIR / name).exists():
            problems.append(f"charts/shoal/crds/{name}: Helm would install it from crds/ and never upgrade it; "
                            "the chart installs it from templates/crds.yaml")
    for copy in sorted(CHART_FILES_DIR.glob("*.yaml")):
        if copy.name not in src:
            problems.append(f"charts/shoal/files/crds/{copy.name} has no source in crds/ (stale)")
    for copy in sorted(CHART_CRDS_DIR.glob("*.yaml")):
        if copy.name not in src and copy.name not in CHART_OWNED:
            problems.append(f"charts/shoal/crds/{copy.name} is neither chart-owned nor in crds/ (stale)")
    return problems


def sync() -> list[str]:
    """Regenerate the typed blocks, copy every crds/*.yaml into the chart, delete stale copies;
    return what changed."""
    src = source_files()
    if not src:
        raise SystemExit(f"error: no CRDs found in {SOURCE_DIR}/*.yaml; nothing to sync")
    version = kubernetes_version()
    CHART_FILES_DIR.mkdir(parents=True, exist_ok=True)
    changed: list[str] = []
    for name, path in src.items():
        if name in CHART_OWNED:
            raise SystemExit(f"error: crds/{name} clashes with the chart-owned file of the same name")
        text = path.read_text()
        generated = generate_kubernetes_blocks(text, version)
        if generated != text:
            path.write_text(generated)
            changed.append(f"regenerated the Kubernetes {version} schemas in crds/{name}")
        copy = CHART_FILES_DIR / name
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            copy.write_bytes(path.read_bytes())
            changed.append(f"copied crds/{name} to charts/shoal/files/crds/")
        old = CHART_CRDS_DIR / name
        if old.exists():
            old.unlink()
            changed.append(f"removed charts/shoal/crds/{name} (installed from templates/crds.yaml now)")
    for copy in sorted(CHART_FILES_DIR.glob("*.yaml")):
        if copy.name not in src:
            copy.unlink()
            changed.append(f"removed stale charts/shoal/files/crds/{copy.name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python scripts/sync_chart_crds.py", file=sys.stderr)
            return 1
        print("the CRDs' Kubernetes schemas and the chart's copies are in sync with crds/")
        return 0
    for line in sync() or ["CRDs already in sync"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
