"""The CRDs' schemas: good manifests pass, each bad one is rejected naming its field.

What the API server does on create/update is reproduced here, in its order:
1. structural defaulting (``default`` of absent fields, recursively);
2. OpenAPI v3 validation (converted to JSON Schema for ``jsonschema``; an unknown field is an
   error, as with kubectl's default strict field validation);
3. the CEL rules (``x-kubernetes-validations``) evaluated with ``cel-python`` (``celpy``),
   including transition rules (``oldSelf``) on updates.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))}
MANIFESTS = REPO / "tests" / "manifests"
EXPECT = "test.shoal.dev/expect"
PREVIOUS = "test.shoal.dev/previous-spec"

Error = tuple[str, str]  # (field path like "spec.worker.env[0].name", message)


def _kind_schema(kind: str) -> dict[str, Any]:
    for crd in CRDS.values():
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = crd["spec"]["versions"]
            return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise KeyError(kind)


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate a structural OpenAPI v3 schema node into JSON Schema (draft 2020-12)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_jsonschema(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue  # OpenAPI 3.0 booleans; handled with minimum/maximum below
        elif key == "minimum" and node.get("exclusiveMinimum") is True:
            out["exclusiveMinimum"] = value
        elif key == "maximum" and node.get("exclusiveMaximum") is True:
            out["exclusiveMaximum"] = value
        elif key == "nullable" or key.startswith("x-kubernetes-") or key == "format":
            continue
        else:
            out[key] = copy.deepcopy(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False  # unknown fields are pruned/refused by the server
    return out


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: absent properties get their ``default``, recursively."""
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    if isinstance(value, list) and "items" in node:
        return [apply_defaults(node["items"], item) for item in value]
    return value


def _join(path: Iterator[Any] | list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _schema_errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[Error]:
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema))
    errors: list[Error] = []
    for error in validator.iter_errors(obj):
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in error.instance]
            path += missing[:1]
        elif error.validator == "additionalProperties":
            known = set(error.schema.get("properties", {}))
            path += sorted(set(error.instance) - known)[:1]
        errors.append((_join(path), error.message))
    return errors


def _cel_rules(node: dict[str, Any], path: list[Any]) -> Iterator[tuple[list[Any], dict[str, Any], dict[str, Any]]]:
    for rule in node.get("x-kubernetes-validations", []):
        yield path, node, rule
    for name, sub in node.get("properties", {}).items():
        yield from _cel_rules(sub, [*path, name])
    if "items" in node:
        yield from _cel_rules(node["items"], [*path, "*"])


def _values_at(obj: Any, path: list[Any], prefix: list[Any] | None = None) -> Iterator[tuple[list[Any], Any]]:
    prefix = prefix or []
    if not path:
        yield prefix, obj
    elif path[0] == "*":
        for i, item in enumerate(obj if isinstance(obj, list) else []):
            yield from _values_at(item, path[1:], [*prefix, i])
    elif isinstance(obj, dict) and path[0] in obj:
        yield from _values_at(obj[path[0]], path[1:], [*prefix, path[0]])


def _to_cel(node: dict[str, Any], value: Any) -> Any:
    """Convert a value to CEL as the API server does: by its schema type (number is double)."""
    from celpy import celtypes

    kind = node.get("type")
    if isinstance(value, dict):
        props = node.get("properties", {})
        extra = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else {}
        return celtypes.MapType({celtypes.StringType(k): _to_cel(props.get(k, extra), v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(node.get("items", {}), v) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "number" or isinstance(value, float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, int):
        return celtypes.IntType(value)
    return celtypes.StringType(str(value))


def _cel_errors(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None) -> list[Error]:
    celpy = pytest.importorskip("celpy", reason="the CEL rules need cel-python (pip install cel-python)")
    env = celpy.Environment()
    errors: list[Error] = []
    for path, node, rule in _cel_rules(schema, []):
        transition = "oldSelf" in rule["rule"]
        program = env.program(env.compile(rule["rule"]))
        for where, value in _values_at(obj, path):
            activation = {"self": _to_cel(node, value)}
            if transition:
                old_values = dict((tuple(p), v) for p, v in _values_at(old, path)) if old else {}
                if tuple(where) not in old_values:
                    continue  # transition rules only run on updates of an existing value
                activation["oldSelf"] = _to_cel(node, old_values[tuple(where)])
            result = program.evaluate(activation)
            if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                field = _join(where) + rule.get("fieldPath", "")
                errors.append((field, rule.get("message") or rule["rule"]))
    return errors


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Error]:
    """All errors the API server would report for creating obj (or updating old to obj)."""
    schema = _kind_schema(obj["kind"])
    obj = apply_defaults(schema, copy.deepcopy(obj))
    old = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
    errors = _schema_errors(schema, obj)
    return errors or _cel_errors(schema, obj, old)  # CEL runs only on schema-valid objects


def _docs(*names: str) -> list[Any]:
    docs = []
    for name in names:
        path = REPO / name
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc["apiVersion"].startswith("shoal.dev/"):
                docs.append(pytest.param(doc, id=f"{path.stem}:{doc['metadata'].get('name', i)}"))
    return docs


GOOD = _docs("tests/manifests/good-queues.yaml", "tests/manifests/good-cronjobs.yaml",
             "examples/queue.yaml", "examples/cronjob.yaml")
BAD = _docs("tests/manifests/bad-queues.yaml", "tests/manifests/bad-cronjobs.yaml")


@pytest.mark.parametrize("crd", list(CRDS.values()), ids=list(CRDS))
def test_crd_is_a_valid_v1_crd(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, "1.30", strict=True)
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.{crd['spec']['group']}"
    assert crd["spec"]["group"] == "shoal.dev" and crd["spec"]["scope"] == "Namespaced"
    assert names["categories"] == ["shoal"] and names["shortNames"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("crd", list(CRDS.values()), ids=list(CRDS))
def test_schema_is_structural_and_defaults_are_valid(crd: dict[str, Any]) -> None:
    """Every node has a type (or is int-or-string); every default passes its own schema;
    every printer column points at a field the schema declares."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], path: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if "default" in node:
            jsonschema.validate(apply_defaults(node, copy.deepcopy(node["default"])), to_jsonschema(node))
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue  # ObjectMeta is the API server's, not in our schema
        node = schema
        for part in column["jsonPath"].split("[")[0].strip(".").split("."):
            assert part in node.get("properties", {}), f"printer column {column['name']}: no {part}"
            node = node["properties"][part]


def test_cel_rules_compile() -> None:
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    rules = [rule for crd in CRDS.values()
             for _, _, rule in _cel_rules(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], [])]
    assert len(rules) >= 6
    for rule in rules:
        env.compile(rule["rule"])
        assert rule["message"] and rule.get("fieldPath", ".").startswith(".")


def test_printer_columns() -> None:
    def names(plural: str) -> list[str]:
        cols = CRDS[plural]["spec"]["versions"][0]["additionalPrinterColumns"]
        return [c["name"] for c in cols if c.get("priority", 0) == 0]

    assert names("queue") == ["Pending", "Running", "Replicas", "Ready", "Min", "Max", "Paused", "Age"]
    assert names("cronjob") == ["Schedule", "Suspend", "Last Schedule", "Next Schedule", "Age"]
    wide = [c["name"] for c in CRDS["queue"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    # Pending, Running, Replicas, Ready and (wide) Queue keep the places they had: scripts read them by position.
    assert wide[:5] == ["Pending", "Running", "Replicas", "Ready", "Queue"]
    queue = {c["name"]: c for c in CRDS["queue"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert queue["Min"]["jsonPath"] == ".spec.autoscaling.minReplicas"
    assert queue["Max"]["jsonPath"] == ".spec.autoscaling.maxReplicas"
    assert queue["Paused"]["jsonPath"] == ".spec.paused" and queue["Paused"]["type"] == "boolean"
    assert queue["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def test_docs_describe_the_queue_columns() -> None:
    """docs/kubernetes.md shows the columns `kubectl get queues` prints, in their order."""
    cols = CRDS["queue"]["spec"]["versions"][0]["additionalPrinterColumns"]
    default = " ".join(["NAME", *(c["name"].upper() for c in cols if c.get("priority", 0) == 0)])
    wide = " ".join(["NAME", *(c["name"].upper() for c in cols)])
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    assert default in docs and wide in docs, (default, wide)


@pytest.mark.parametrize("manifest", GOOD)
def test_good_manifest_passes(manifest: dict[str, Any]) -> None:
    assert validate(manifest) == []


@pytest.mark.parametrize("manifest", BAD)
def test_bad_manifest_is_rejected_naming_its_field(manifest: dict[str, Any]) -> None:
    expected = manifest["metadata"]["annotations"][EXPECT]
    old = None
    if PREVIOUS in manifest["metadata"]["annotations"]:
        old = dict(copy.deepcopy(manifest), spec=json.loads(manifest["metadata"]["annotations"][PREVIOUS]))
        assert validate(old) == [], "the previous spec of an update must itself be valid"
    errors = validate(manifest, old)
    assert errors, f"accepted, but {expected} should have been refused"
    assert [field for field, _ in errors] == [expected], errors


def test_defaults_are_filled_in() -> None:
    queue = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "q"},
             "spec": {"databaseSecretRef": {"name": "db"}, "worker": {"image": "x"}}}
    spec = apply_defaults(_kind_schema("Queue"), queue)["spec"]
    assert spec["databaseSecretRef"] == {"name": "db", "key": "url"}
    assert spec["concurrency"] == 10 and spec["paused"] is False and spec["deletionPolicy"] == "Retain"
    assert spec["retry"] == {"maxAttempts": 5, "backoffBaseSeconds": 1, "backoffMaxSeconds": 300}
    assert spec["retention"] == {"succeededSeconds": 0}
    assert spec["autoscaling"] == {"minReplicas": 1, "maxReplicas": 10, "scaleDownDelaySeconds": 60,
                                   "scaleToZero": False, "pollIntervalSeconds": 1}
    assert "queueName" not in spec and "rateLimit" not in spec and "jobTimeoutSeconds" not in spec
    cron = {"apiVersion": "shoal.dev/v1alpha1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "queueRef": {"name": "q"}, "task": "t"}}
    spec = apply_defaults(_kind_schema("CronJob"), cron)["spec"]
    assert (spec["timeZone"], spec["priority"], spec["suspend"], spec["concurrencyPolicy"]) == \
        ("UTC", 0, False, "Allow")
    assert "startingDeadlineSeconds" not in spec and "payload" not in spec


# --------------------------------------------------------------------------- the pod template's Kubernetes types


def queue(worker: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "q"},
            "spec": {"databaseSecretRef": {"name": "db"}, "worker": {"image": "img:1", **worker}}}


FULL_WORKER: dict[str, Any] = {
    "imagePullSecrets": [{"name": "regcred"}],
    "env": [{"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}},
            {"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}],
    "envFrom": [{"configMapRef": {"name": "cfg"}}, {"prefix": "S_", "secretRef": {"name": "sec"}}],
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": 2, "memory": "1Gi"}},
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}},
                {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420, "items": [{"key": "a", "path": "a"}]}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}],
    "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True}],
    "nodeSelector": {"disk": "ssd"},
    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": {"shoal.dev/queue": "q"}}}}]}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"shoal.dev/queue": "q"}}}],
    "priorityClassName": "batch-low",
    "podLabels": {"team": "mail", "example.com/cost-center": "42"},
    "podAnnotations": {"a": "b"},
    "drainTimeoutSeconds": 600,
}


def test_a_full_pod_template_passes() -> None:
    assert validate(queue(FULL_WORKER)) == []


@pytest.mark.parametrize(("worker", "field"), [
    ({"resources": {"requets": {"cpu": "1"}}}, "spec.worker.resources.requets"),
    ({"resources": {"limits": {"memory": "128MB"}}}, "spec.worker.resources.limits.memory"),
    ({"resources": {"limits": {"cpu": [1]}}}, "spec.worker.resources.limits.cpu"),
    ({"env": [{"name": "A", "valeu": "1"}]}, "spec.worker.env[0].valeu"),
    ({"env": [{"value": "1"}]}, "spec.worker.env[0].name"),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"nme": "s", "key": "k"}}}]},
     "spec.worker.env[0].valueFrom.secretKeyRef.nme"),
    ({"envFrom": [{"configMap": {"name": "c"}}]}, "spec.worker.envFrom[0].configMap"),
    ({"tolerations": [{"key": "k", "operater": "Exists"}]}, "spec.worker.tolerations[0].operater"),
    ({"tolerations": [{"key": "k", "tolerationSeconds": "soon"}]}, "spec.worker.tolerations[0].tolerationSeconds"),
    ({"affinity": {"nodeAfinity": {}}}, "spec.worker.affinity.nodeAfinity"),
    ({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}]}}},
     "spec.worker.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm"),
    ({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]},
     "spec.worker.topologySpreadConstraints[0].whenUnsatisfiable"),
    ({"volumes": [{"name": "v", "configMap": {"nmae": "c"}}]}, "spec.worker.volumes[0].configMap.nmae"),
    ({"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "lots"}}]}, "spec.worker.volumes[0].emptyDir.sizeLimit"),
    ({"volumeMounts": [{"name": "v"}]}, "spec.worker.volumeMounts[0].mountPath"),
    ({"imagePullSecrets": ["regcred"]}, "spec.worker.imagePullSecrets[0]"),
    ({"imagePullSecrets": [{"nane": "regcred"}]}, "spec.worker.imagePullSecrets[0].nane"),
    ({"priorityClassName": ""}, "spec.worker.priorityClassName"),
    ({"podLabels": {"team": 7}}, "spec.worker.podLabels.team"),
    ({"drainTimeoutSeconds": -1}, "spec.worker.drainTimeoutSeconds"),
    ({"drainTimeoutSeconds": 1.5}, "spec.worker.drainTimeoutSeconds"),
    ({"drainTimeoutSeconds": 86401}, "spec.worker.drainTimeoutSeconds"),
])
def test_pod_template_mistakes_are_refused(worker: dict[str, Any], field: str) -> None:
    errors = validate(queue(worker))
    assert {f for f, _ in errors} == {field}, errors


@pytest.mark.parametrize("label", ["shoal.dev/queue", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"])
def test_the_operators_pod_labels_are_refused_by_cel(label: str) -> None:
    errors = validate(queue({"podLabels": {"team": "x", label: "mine"}}))
    assert [f for f, _ in errors] == ["spec.worker.podLabels"] and "operator's" in errors[0][1], errors
    assert validate(queue({"podLabels": {"app.kubernetes.io/part-of": "mail"}})) == []


def _worker_schema() -> dict[str, Any]:
    return _kind_schema("Queue")["properties"]["spec"]["properties"]["worker"]  # type: ignore[no-any-return]


def test_kubernetes_types_are_kubernetes_schemas_not_free_form() -> None:
    """The typed fields are Kubernetes' own schemas (for the oldest Kubernetes the chart
    supports), generated by scripts/sync_chart_crds.py; nothing under spec preserves unknown
    fields, so the API server refuses a typo instead of storing it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_chart_crds", REPO / "scripts" / "sync_chart_crds.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    version = sync.kubernetes_version()
    props = _worker_schema()["properties"]
    typed = {"imagePullSecrets": "[]LocalObjectReference", "env": "[]EnvVar", "envFrom": "[]EnvFromSource",
             "resources": "ResourceRequirements", "volumes": "[]Volume", "volumeMounts": "[]VolumeMount",
             "tolerations": "[]Toleration", "affinity": "Affinity",
             "topologySpreadConstraints": "[]TopologySpreadConstraint"}
    for field, kind in typed.items():
        as_list = kind.startswith("[]")
        expected = sync.kubernetes_schema(f"io.k8s.api.core.v1.{kind.removeprefix('[]')}", as_list, version)
        node = {k: v for k, v in props[field].items() if k != "description"}
        assert node == expected, f"spec.worker.{field}: run python scripts/sync_chart_crds.py"

    def walk(node: dict[str, Any], path: str) -> None:
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}.{key}")

    walk(_kind_schema("Queue")["properties"]["spec"], "spec")


# --------------------------------------------------------------------------- the drain-time objective


def autoscaled(autoscaling: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "q"},
            "spec": {"databaseSecretRef": {"name": "db"}, "worker": {"image": "img:1"},
                     "autoscaling": autoscaling}}


@pytest.mark.parametrize("seconds", [1, 30, 120, 86400])
def test_a_drain_objective_passes(seconds: int) -> None:
    assert validate(autoscaled({"drainWithinSeconds": seconds})) == []


@pytest.mark.parametrize("seconds", [0, -5, 0.5, 86401, "2m"])
def test_a_bad_drain_objective_is_refused_naming_it(seconds: Any) -> None:
    errors = validate(autoscaled({"drainWithinSeconds": seconds}))
    assert errors and {field for field, _ in errors} == {"spec.autoscaling.drainWithinSeconds"}, errors


def test_the_drain_objective_has_no_default() -> None:
    spec = apply_defaults(_kind_schema("Queue"), autoscaled({}))["spec"]
    assert "drainWithinSeconds" not in spec["autoscaling"]
