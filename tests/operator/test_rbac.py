"""The operator's ClusterRole, as rendered by the real `helm template`, grants exactly what the
operator's code needs: nothing missing, nothing extra.

What the code needs is derived, not copied:

* the Kubernetes calls the operator makes itself: `shoal.operator.kube.API_CALLS`, which an AST
  scan of the operator package keeps honest (every ``kubernetes.client`` method the code
  references must be listed there, and every entry there must be referenced);
* what kopf makes on the operator's behalf, for the options the chart starts it with: the
  chart's container args are parsed with the real `shoal operator` parser (clusterwide or
  namespaced, peering or standalone), the handlers are registered into a fresh registry to
  see which resources kopf serves and how, and the startup handler is run on fresh settings
  (scanning, event posting, where kopf stores its state).

Rule order and verb order in the chart do not matter: rules are expanded into a set of
(apiGroup, resource, verb) grants before comparing.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import random
import re
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import pytest
import yaml

import shoal.operator
from shoal.operator import kube
from shoal.operator.cli import register as register_cli
from shoal.operator.config import OperatorConfig
from shoal.operator.databases import Databases
from shoal.operator.handlers import register as register_handlers
from tools import REPO_ROOT, helm

CHART = REPO_ROOT / "charts" / "shoal"
RELEASE, NAMESPACE = "shoal", "shoal-system"

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# handlers.configure still sets settings.batching (kopf 1.45 renamed it settings.queueing);
# the warning comes from running that startup handler here, not from anything tested.
pytestmark = pytest.mark.filterwarnings("ignore:Batching settings are now queueing settings:DeprecationWarning")


# --------------------------------------------------------------------------- the chart


@cache
def rendered(*sets: str) -> tuple[dict[str, Any], ...]:
    args = [str(helm()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def cluster_role(*sets: str) -> dict[str, Any]:
    (role,) = [d for d in rendered(*sets) if d["kind"] == "ClusterRole"]
    return role


def operator_args(*sets: str) -> list[str]:
    (dep,) = [d for d in rendered(*sets) if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{RELEASE}-operator"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def expand(rules: Iterable[Mapping[str, Any]]) -> set[Grant]:
    """Every (apiGroup, resource, verb) a list of RBAC rules grants. Order-insensitive."""
    grants: set[Grant] = set()
    for rule in rules:
        assert not rule.get("nonResourceURLs"), f"the operator needs no non-resource URLs: {rule}"
        assert not rule.get("resourceNames"), f"unexpected resourceNames (compare would be wrong): {rule}"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        grants |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return grants


# --------------------------------------------------------------------------- the operator's own calls


def _client_methods() -> dict[str, list[type]]:
    """Public method name → the kubernetes.client API classes defining it."""
    index: dict[str, list[type]] = {}
    for name, cls in inspect.getmembers(kubernetes.client, inspect.isclass):
        if not name.endswith("Api") or name == "ApiClient":
            continue
        for method in vars(cls):
            if method.startswith("_") or method.endswith(("_with_http_info", "_without_preload_content")):
                continue
            index.setdefault(method, []).append(cls)
    return index


_HTTP = re.compile(r"'(GET|POST|PUT|PATCH|DELETE)'")
_PATH = re.compile(r"'(/apis?/[^']*)'")


def endpoint(cls: type, method: str) -> tuple[str, str]:
    """(HTTP method, path template) of a kubernetes client method, read from its source."""
    for impl in (f"_{method}_serialize", f"{method}_with_http_info"):  # new and old generators
        fn = getattr(cls, impl, None)
        if fn is None:
            continue
        src = inspect.getsource(fn)
        http, path = _HTTP.search(src), _PATH.search(src)
        if http and path:
            return http.group(1), path.group(1)
    raise AssertionError(f"cannot find the endpoint of {cls.__name__}.{method} in the kubernetes client")


def to_grant(http: str, path: str, method: str, group_plural: tuple[str, str] | None = None) -> Grant:
    """The RBAC (apiGroup, resource, verb) an API path and HTTP method need."""
    segments = path.strip("/").split("/")
    if segments[0] == "api":
        group, rest = "", segments[2:]
    else:
        group, rest = segments[1], segments[3:]
    if len(rest) > 2 and rest[0] == "namespaces" and rest[1] == "{namespace}":
        rest = rest[2:]
    resource, named = rest[0], len(rest) > 1
    if group == "{group}" or resource == "{plural}":
        assert group_plural, f"{method}: a custom-object call whose group/plural are not string literals"
        group, resource = group_plural
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    if method.startswith("watch_"):
        verb = "watch"
    else:
        verb = {
            ("GET", True): "get", ("GET", False): "list",
            ("POST", True): "create", ("POST", False): "create",
            ("PUT", True): "update", ("PATCH", True): "patch",
            ("DELETE", True): "delete", ("DELETE", False): "deletecollection",
        }[(http, named)]
    return group, resource, verb


def code_calls(package_dir: Path) -> dict[Grant, list[str]]:
    """Every Kubernetes call the operator package's code references → where (file:line)."""
    index = _client_methods()
    found: dict[Grant, list[str]] = {}
    for file in sorted(package_dir.glob("*.py")):
        tree = ast.parse(file.read_text(), str(file))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr in index):
                continue
            classes = index[node.attr]
            if len(classes) != 1:
                continue  # generic names shared by many API classes (discovery): no RBAC involved
            call = parents.get(node)
            group_plural = None
            if isinstance(call, ast.Call):
                literals = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                named = {k.arg: k.value.value for k in call.keywords
                         if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
                if "group" in named and "plural" in named:
                    group_plural = (named["group"], named["plural"])
                elif len(literals) >= 3:
                    group_plural = (literals[0], literals[2])  # (group, version, plural, ...)
            http, path = endpoint(classes[0], node.attr)
            grant = to_grant(http, path, node.attr, group_plural)
            found.setdefault(grant, []).append(f"{file.name}:{node.lineno} {node.attr}")
    return found


# --------------------------------------------------------------------------- what kopf does for us


def parse_operator_args(args: list[str]) -> argparse.Namespace:
    """The chart's container args through the real `shoal operator` parser."""
    parser = argparse.ArgumentParser(prog="shoal")
    register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(args)


def registered() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register_handlers(registry, OperatorConfig(), Databases())
    return registry


def startup_settings(registry: kopf.OperatorRegistry) -> kopf.OperatorSettings:
    """Fresh settings after the operator's own startup handlers ran on them (as kopf does)."""
    from kopf._core.intents.causes import Activity

    settings = kopf.OperatorSettings()
    for handler in registry._activities.get_all_handlers():
        if handler.activity == Activity.STARTUP:
            result = handler.fn(settings=settings, logger=logging.getLogger("test"), memo=kopf.Memo())
            assert not inspect.isawaitable(result), "async startup handler: run it here too"
    return settings


def crd_has_status_subresource(group: str, plural: str) -> bool:
    """From the CRDs the chart installs: its crds/ folder (kopf's) and files/crds/ (Shoal's,
    rendered by templates/crds.yaml)."""
    for path in sorted([*(CHART / "crds").glob("*.yaml"), *(CHART / "files" / "crds").glob("*.yaml")]):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd and crd["spec"]["group"] == group and crd["spec"]["names"]["plural"] == plural:
                return any("status" in (v.get("subresources") or {}) for v in crd["spec"]["versions"])
    raise AssertionError(f"no CRD for {plural}.{group} in the chart's crds/ or files/crds/")


def kopf_needs(args: argparse.Namespace, registry: kopf.OperatorRegistry,
               settings: kopf.OperatorSettings) -> dict[Grant, str]:
    """What kopf calls on the operator's behalf. Each entry says which kopf machinery needs it.

    Read from kopf 1.45's source: it lists+watches every served resource
    (clients/watching.py: a list, then a watch stream), patches served objects with merge and
    JSON patches (clients/patching.py: the body for finalizers and annotations, and the
    ``/status`` subresource separately when the CRD has one), POSTs Events
    (clients/events.py), lists+watches CRDs (reactor/observation.py resource_observer),
    lists+watches namespaces only when not clusterwide, and patches + lists/watches the peering
    object (engines/peering.py touch/clean; reactor/orchestration.py). It never GETs a single
    object, never creates or deletes the served resources, and never patches Events.
    """
    needs: dict[Grant, str] = {}
    clusterwide = not args.namespace  # cli.run_operator: clusterwide=not args.namespace
    peering = None if (args.standalone or not args.peering) else args.peering

    # Resources the handlers serve (handlers.register), and how.
    serving: dict[tuple[str, str], set[str]] = {}
    for kind in ("_changing", "_spawning", "_watching", "_indexing"):
        for handler in getattr(registry, kind).get_all_handlers():
            selector = handler.selector
            assert selector is not None and selector.group is not None, f"unresolvable selector {selector}"
            plural = selector.plural or selector.any_name
            assert plural, f"selector without a plural: {selector}"
            serving.setdefault((selector.group, plural), set()).add(kind)
    assert not registry._webhooks.get_all_handlers(), (
        "admission webhooks registered: kopf then manages (validating|mutating)webhookconfigurations; "
        "add those needs here and in the chart")
    assert serving, "no resource handlers registered?"
    for (group, plural), kinds in sorted(serving.items()):
        where = "clusterwide" if clusterwide else f"in {args.namespace}"
        needs[(group, plural, "list")] = f"kopf: initial list of {plural} {where} (handlers.py serves them)"
        needs[(group, plural, "watch")] = f"kopf: watch stream of {plural} {where}"
        if kinds & {"_changing", "_spawning"}:
            # Change handlers and timers: kopf's finalizer (settings.persistence.finalizer) and
            # its progress/diff-base annotations (AnnotationsProgressStorage) go on the object.
            needs[(group, plural, "patch")] = f"kopf: finalizer and progress annotations on {plural}"
            # handlers._apply writes the reconcilers' results into patch.status; with a status
            # subresource kopf sends that part to /status.
            if crd_has_status_subresource(group, plural):
                needs[(group, f"{plural}/status", "patch")] = (
                    f"kopf: handlers._apply → patch.status of {plural} (conditions, counts)")

    if settings.posting.enabled:
        needs[("", "events", "create")] = "kopf.event() in handlers._post and kopf's own warnings"
    if not settings.scanning.disabled:
        needs[("apiextensions.k8s.io", "customresourcedefinitions", "list")] = "kopf: resource_observer scan"
        needs[("apiextensions.k8s.io", "customresourcedefinitions", "watch")] = "kopf: resource_observer watch"
        if not clusterwide:
            needs[("", "namespaces", "list")] = "kopf: namespace_observer (namespace patterns)"
            needs[("", "namespaces", "watch")] = "kopf: namespace_observer (namespace patterns)"
    if peering:
        plural = "clusterkopfpeerings" if clusterwide else "kopfpeerings"
        needs[("kopf.dev", plural, "list")] = f"kopf peering {peering!r}: list the peers"
        needs[("kopf.dev", plural, "watch")] = f"kopf peering {peering!r}: watch the peers (pause/resume)"
        needs[("kopf.dev", plural, "patch")] = f"kopf peering {peering!r}: keep-alive and cleanup of peers"
    return needs


def required(*sets: str) -> dict[Grant, list[str]]:
    """Every grant the operator needs when started as the chart (with these values) starts it."""
    args = parse_operator_args(operator_args(*sets))
    assert args.command == "operator", args
    registry = registered()
    out: dict[Grant, list[str]] = {}
    sources: list[Mapping[Grant, str]] = [kube.API_CALLS, kopf_needs(args, registry, startup_settings(registry))]
    for source in sources:
        for grant, why in source.items():
            out.setdefault(grant, []).append(why)
    return out


def diff(needed: Iterable[Grant], granted: Iterable[Grant]) -> tuple[set[Grant], set[Grant]]:
    """(missing from the chart, granted but unused)."""
    needed, granted = set(needed), set(granted)
    return needed - granted, granted - needed


def fmt(grants: Iterable[Grant], why: Mapping[Grant, list[str]] | None = None) -> str:
    lines = []
    for g, r, v in sorted(grants):
        reason = "; ".join((why or {}).get((g, r, v), []))
        lines.append(f"  apiGroup {g!r} resource {r!r} verb {v!r}" + (f"  ← {reason}" if reason else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- tests


def test_the_chart_runs_the_operator_clusterwide_with_peering() -> None:
    """The kopf needs below are derived for these options; a chart change re-derives them."""
    args = parse_operator_args(operator_args())
    assert args.namespace == [] and not args.standalone and args.peering == "shoal", args


def test_api_calls_list_every_kubernetes_call_in_the_operator_code() -> None:
    package = Path(shoal.operator.__file__).parent
    found = code_calls(package)
    assert found, "the scan found no Kubernetes calls at all; did kube.py change shape?"
    unlisted = {g: w for g, w in found.items() if g not in kube.API_CALLS}
    assert not unlisted, (
        "the operator calls these without listing them in shoal.operator.kube.API_CALLS (add them there "
        "with their code path, and grant them in charts/shoal/templates/rbac.yaml):\n"
        + "\n".join(f"  {g}: {', '.join(w)}" for g, w in sorted(unlisted.items())))
    stale = set(kube.API_CALLS) - set(found)
    assert not stale, f"kube.API_CALLS lists calls no operator code makes:\n{fmt(stale)}"


def test_chart_grants_everything_the_operator_needs() -> None:
    needed = required()
    missing, _ = diff(needed, expand(cluster_role()["rules"]))
    assert not missing, ("the operator needs these but charts/shoal/templates/rbac.yaml does not grant "
                         f"them:\n{fmt(missing, needed)}")


def test_chart_grants_nothing_the_operator_does_not_use() -> None:
    needed = required()
    _, extra = diff(needed, expand(cluster_role()["rules"]))
    assert not extra, ("charts/shoal/templates/rbac.yaml grants these but no code path needs them "
                       f"(remove them, or list the call in kube.API_CALLS):\n{fmt(extra)}")


@pytest.mark.parametrize("sets", [(), ("operator.replicas=1",), ("operator.peering.create=false",)],
                         ids=["defaults", "one-replica", "external-peering"])
def test_rbac_is_the_same_for_other_values(sets: tuple[str, ...]) -> None:
    assert expand(cluster_role(*sets)["rules"]) == set(required(*sets))


def test_no_cluster_role_without_rbac_create() -> None:
    assert not [d for d in rendered("rbac.create=false") if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


def test_comparison_ignores_rule_and_verb_order() -> None:
    rules = cluster_role()["rules"]
    rng = random.Random(7)
    for _ in range(5):
        shuffled = [dict(r, verbs=rng.sample(r["verbs"], len(r["verbs"])),
                         resources=rng.sample(r["resources"], len(r["resources"]))) for r in rules]
        rng.shuffle(shuffled)
        assert expand(shuffled) == expand(rules)
    # The same grants split into one rule per verb, or merged per group, compare equal too.
    split = [{"apiGroups": [g], "resources": [r], "verbs": [v]} for g, r, v in expand(rules)]
    assert expand(split) == expand(rules)


def test_comparison_catches_both_directions() -> None:
    """The two contract tests fail for a new code call and for an unused grant."""
    granted = expand(cluster_role()["rules"])
    needed = set(required())
    new_call = ("apps", "replicasets", "list")
    assert diff(needed | {new_call}, granted) == ({new_call}, set())
    guessed = ("", "events", "patch")
    assert diff(needed, granted | {guessed}) == (set(), {guessed})
    assert diff(needed, granted) == (set(), set())


def test_endpoint_mapping() -> None:
    """Spot checks of the path → (group, resource, verb) mapping the code scan relies on."""
    cases = {
        ("CoreV1Api", "read_namespaced_secret"): ("", "secrets", "get"),
        ("AppsV1Api", "create_namespaced_deployment"): ("apps", "deployments", "create"),
        ("AppsV1Api", "patch_namespaced_deployment_scale"): ("apps", "deployments/scale", "patch"),
        ("AppsV1Api", "read_namespaced_deployment_scale"): ("apps", "deployments/scale", "get"),
        ("AppsV1Api", "list_deployment_for_all_namespaces"): ("apps", "deployments", "list"),
        ("CoreV1Api", "list_namespace"): ("", "namespaces", "list"),
        ("CoreV1Api", "delete_collection_namespaced_pod"): ("", "pods", "deletecollection"),
        ("AppsV1Api", "replace_namespaced_deployment"): ("apps", "deployments", "update"),
        ("CoreV1Api", "patch_namespaced_pod"): ("", "pods", "patch"),
    }
    for (cls, method), grant in cases.items():
        http, path = endpoint(getattr(kubernetes.client, cls), method)
        assert to_grant(http, path, method) == grant, (cls, method)
    http, path = endpoint(kubernetes.client.CustomObjectsApi, "patch_namespaced_custom_object_status")
    assert to_grant(http, path, "x", ("shoal.dev", "queues")) == ("shoal.dev", "queues/status", "patch")
