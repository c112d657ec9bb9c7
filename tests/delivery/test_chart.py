"""The Helm chart, checked with the real tools: helm 4 lints and renders it, and every
rendered manifest of a kind Kubernetes knows is validated with kubernetes-validate --strict."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from tools import REPO_ROOT, helm

CHART = REPO_ROOT / "charts" / "shoal"
NAMESPACE = "shoal-system"
RELEASE = "shoal"

# Kinds kubernetes-validate has no schema for (custom resources): rendered, parsed and
# checked by the tests below, but not schema-validated. Every other kind must validate.
CUSTOM_KINDS = {
    ("kopf.dev/v1", "ClusterKopfPeering"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

DB_URL = "postgresql://shoal:s3cret@db.example.internal:5432/shoal"

# (id, --set arguments) rendered and validated; assertions per variant follow below.
VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "existing-secret": ["database.existingSecret=pg-credentials", "database.existingSecretKey=dsn"],
    "url": [f"database.url={DB_URL}"],
    "monitors-on": [
        "monitoring.operator.enabled=true",
        "monitoring.workers.enabled=true",
        "monitoring.workers.labels.release=kube-prometheus",
    ],
    "dashboard-on": ["dashboard.enabled=true", "dashboard.namespace=monitoring"],
    "alerts-on": ["alerts.enabled=true", "alerts.labels.release=kube-prometheus", "alerts.ruleLabels.team=ops"],
    "console-on": ["console.enabled=true"],
    "console-admin": [
        "console.enabled=true",
        "console.adminTokenSecret.name=console-admin",
        "console.adminTokenSecret.key=admin-token",
        f"database.url={DB_URL}",
    ],
    "migrations-off": ["migrations.enabled=false"],
    "one-replica": ["operator.replicas=1"],
    "crds-off": ["crds.install=false"],
    "crds-unkept": ["crds.keep=false"],
    "everything": [
        f"database.url={DB_URL}",
        "monitoring.operator.enabled=true",
        "monitoring.workers.enabled=true",
        "dashboard.enabled=true",
        "operator.replicas=3",
        "image.digest=sha256:" + "a" * 64,
        "imagePullSecrets[0].name=regcred",
        "alerts.enabled=true",
        "console.enabled=true",
    ],
}


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_args(sets: Iterable[str]) -> list[str]:
    out: list[str] = []
    for s in sets:
        out += ["--set", s]
    return out


@cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    proc = run_helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--include-crds",
        *set_args(VARIANTS[variant]),
    )
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = find(docs, kind, name)
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {[h['metadata']['name'] for h in hits]}"
    return hits[0]


def operator_deployment(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", f"{RELEASE}-operator")


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def db_env(c: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e for e in c.get("env", [])}
    assert "SHOAL_DATABASE_URL" in env, "SHOAL_DATABASE_URL missing"
    entry = env["SHOAL_DATABASE_URL"]
    assert "value" not in entry, "the database URL must come from a Secret, never inline"
    return entry["valueFrom"]["secretKeyRef"]


def k8s_versions() -> list[str]:
    """Validate against the oldest Kubernetes the chart supports and the newest schema known."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    oldest = re.search(r"(\d+\.\d+)", chart["kubeVersion"])
    assert oldest, chart["kubeVersion"]
    known = kv_utils.all_versions()
    versions = [v for v in known if kv_utils.major_minor(v) == oldest.group(1)][:1]
    return versions + [kv_utils.latest_version()]


# --------------------------------------------------------------------------- lint & render


def test_helm_is_version_4() -> None:
    out = run_helm("version", "--short").stdout.strip()
    assert out.startswith("v4."), out


def test_lint_strict_defaults() -> None:
    proc = run_helm("lint", "--strict", str(CHART), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "defaults"])
def test_lint_strict_variants(variant: str) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *set_args(VARIANTS[variant]), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_manifests_validate_strict(variant: str) -> None:
    docs = render(variant)
    assert docs, "helm template rendered nothing"
    errors: list[str] = []
    validated = 0
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CUSTOM_KINDS:
            continue
        for version in k8s_versions():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(
                    f"{doc['kind']}/{doc['metadata'].get('name')} (k8s {version}): {path}: {e.message}"
                )
            except kv_utils.SchemaNotFoundError:
                errors.append(
                    f"{key} has no schema in kubernetes-validate: add it to CUSTOM_KINDS only if it "
                    "is a custom resource"
                )
        validated += 1
    assert not errors, "\n".join(errors)
    assert validated >= 4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_namespaced_object_is_in_the_release_namespace(variant: str) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering"}
    for doc in render(variant):
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], doc["metadata"]
        elif doc["kind"] == "ConfigMap" and variant == "dashboard-on":
            assert doc["metadata"]["namespace"] == "monitoring"
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"


# --------------------------------------------------------------------------- operator


def test_operator_deployment_defaults() -> None:
    docs = render("defaults")
    dep = operator_deployment(docs)
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    c = container(dep)
    assert c["args"][0] == "operator"
    assert "--peering=shoal" in c["args"]
    assert c["image"] == "shoal:0.1.0"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == 8080, probe
    # Non-root, read-only root filesystem, no capabilities.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    # The one writable place.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert db_env(c) == {"name": "shoal-database", "key": "url"}
    sa = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    # The selector picks the operator's own pods only.
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_high_availability() -> None:
    docs = render("defaults")
    peering = one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "shoal"
    pdb = one(docs, "PodDisruptionBudget")
    dep = operator_deployment(docs)
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]
    # The peering CRDs ship in the chart's crds/ so the peering object can be created.
    crds = {d["metadata"]["name"] for d in find(docs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


def test_one_replica_has_no_pdb() -> None:
    docs = render("one-replica")
    assert operator_deployment(docs)["spec"]["replicas"] == 1
    assert not find(docs, "PodDisruptionBudget"), "a PDB with minAvailable 1 would block every drain"


# --------------------------------------------------------------------------- database


def test_existing_secret_is_referenced_not_created() -> None:
    docs = render("existing-secret")
    assert not find(docs, "Secret"), "no Secret may be created when database.existingSecret is used"
    assert db_env(container(operator_deployment(docs))) == {"name": "pg-credentials", "key": "dsn"}
    job = one(docs, "Job")
    assert db_env(container(job)) == {"name": "pg-credentials", "key": "dsn"}


def test_url_creates_the_secret() -> None:
    docs = render("url")
    secrets = {d["metadata"]["name"]: d for d in find(docs, "Secret")}
    main = secrets.pop(f"{RELEASE}-database")
    assert "helm.sh/hook" not in main["metadata"].get("annotations", {})
    assert main["stringData"] == {"url": DB_URL}
    assert db_env(container(operator_deployment(docs))) == {"name": f"{RELEASE}-database", "key": "url"}
    # The migration hook runs before ordinary resources exist, so it has its own hook Secret,
    # created before the Job (lower weight).
    ((hook_name, hook_secret),) = secrets.items()
    job = one(docs, "Job")
    assert db_env(container(job)) == {"name": hook_name, "key": "url"}
    assert hook_secret["stringData"] == {"url": DB_URL}
    ha, ja = hook_secret["metadata"]["annotations"], job["metadata"]["annotations"]
    assert ha["helm.sh/hook"] == ja["helm.sh/hook"]
    assert int(ha["helm.sh/hook-weight"]) < int(ja["helm.sh/hook-weight"])


# --------------------------------------------------------------------------- migrations


def test_migration_job_is_a_pre_install_upgrade_hook() -> None:
    job = one(render("defaults"), "Job")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    c = container(job)
    assert c["args"] == ["migrate"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_migrations_off() -> None:
    docs = render("migrations-off")
    assert not find(docs, "Job")
    assert not [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]


# --------------------------------------------------------------------------- monitoring


def test_monitors_off_by_default() -> None:
    docs = render("defaults")
    assert not find(docs, "PodMonitor") and not find(docs, "ServiceMonitor") and not find(docs, "ConfigMap")
    assert not find(docs, "PrometheusRule")


def test_alerts_on() -> None:
    """The PrometheusRule's rules are checked with promtool in test_alerts.py; here, the object."""
    rule = one(render("alerts-on"), "PrometheusRule", RELEASE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert rules and all(r["labels"]["team"] == "ops" for r in rules)
    assert all(r["alert"].startswith("Shoal") for r in rules), "the dashboard's alert panel selects Shoal.+"


def test_monitors_on() -> None:
    docs = render("monitors-on")
    operator = one(docs, "PodMonitor", f"{RELEASE}-operator")
    dep = operator_deployment(docs)
    assert operator["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert [e["port"] for e in operator["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in container(dep)["ports"]}

    workers = one(docs, "PodMonitor", f"{RELEASE}-workers")
    assert workers["metadata"]["labels"]["release"] == "kube-prometheus"
    assert workers["spec"]["namespaceSelector"] == {"any": True}
    sel = workers["spec"]["selector"]
    assert sel["matchLabels"] == {"app.kubernetes.io/component": "worker"}
    assert {"key": "shoal.dev/queue", "operator": "Exists"} in sel["matchExpressions"]
    assert [e["port"] for e in workers["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_dashboard_configmap() -> None:
    cm = one(render("dashboard-on"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    assert key.endswith(".json")
    source = (CHART / "dashboards" / "shoal.json").read_text()
    assert json.loads(cm["data"][key]) == json.loads(source)


# --------------------------------------------------------------------------- console


def console_deployment(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", f"{RELEASE}-console")


def test_console_off_by_default() -> None:
    docs = render("defaults")
    assert not find(docs, "Deployment", f"{RELEASE}-console") and not find(docs, "Service")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["console"]["enabled"] is False


@pytest.mark.parametrize("variant", ["console-on", "console-admin"])
def test_console(variant: str) -> None:
    docs = render(variant)
    dep = console_deployment(docs)
    c = container(dep)
    assert c["image"] == container(operator_deployment(docs))["image"]
    assert c["args"][:5] == ["console", "--host", "0.0.0.0", "--port", "8090"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8090}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == 8090, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # The same database Secret as the operator, and the same hardening.
    assert db_env(c) == db_env(container(operator_deployment(docs)))
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in c["env"]}
    if variant == "console-admin":
        assert env["SHOAL_CONSOLE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "console-admin", "key": "admin-token"}
        assert db_env(c) == {"name": f"{RELEASE}-database", "key": "url"}
    else:
        assert "SHOAL_CONSOLE_ADMIN_TOKEN" not in env, "without adminTokenSecret the console is read-only"
    # The Service reaches the console pods only, not the operator's.
    svc = one(docs, "Service", f"{RELEASE}-console")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    op_labels = operator_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= op_labels.items()
    assert not operator_deployment(docs)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8090, "http")]


# --------------------------------------------------------------------------- RBAC

# The operator's contract (see templates/rbac.yaml for why each is needed). tests/operator/test_rbac.py
# derives the same set from the code (kube.API_CALLS and kopf's needs) and compares.
EXPECTED_RBAC = {
    ("shoal.dev", "queues"): {"get", "list", "watch", "patch"},
    ("shoal.dev", "cronjobs"): {"list", "watch", "patch"},
    ("shoal.dev", "queues/status"): {"patch"},
    ("shoal.dev", "cronjobs/status"): {"patch"},
    ("apps", "deployments"): {"get", "create", "patch", "delete"},
    ("apps", "deployments/scale"): {"get", "patch"},
    ("", "events"): {"create"},
    ("", "secrets"): {"get"},
    ("", "pods"): {"patch"},
    ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


def rbac_grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_rbac_is_exactly_the_contract() -> None:
    docs = render("defaults")
    role = one(docs, "ClusterRole")
    grants = rbac_grants(role["rules"])
    assert grants == EXPECTED_RBAC
    for (_, _), verbs in grants.items():
        assert "*" not in verbs
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_every_rbac_rule_is_justified_by_a_comment() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(starts) >= len({g for g, _ in EXPECTED_RBAC})
    for i in starts:
        assert lines[i - 1].strip().startswith("#"), (
            f"rbac.yaml line {i + 1}: rule without a justifying comment"
        )


# --------------------------------------------------------------------------- schema

BAD_VALUES = [
    (["operator.replicas=0"], "/operator/replicas"),
    (["--set-string", "operator.replicas=two"], "/operator/replicas"),
    (["image.repository="], "/image/repository"),
    (["image.repository=null"], "image"),
    (["database.existingSecret="], "/database"),
    (["database.url=mysql://root@db/shoal"], "/database/url"),
    (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["monitoring.workers.interval=soon"], "/monitoring/workers/interval"),
    (["migrations.enabled=maybe"], "/migrations/enabled"),
    (["operatr.replicas=2"], "operatr"),
    (["crds.install=maybe"], "/crds/install"),
    (["alerts.enabled=maybe"], "/alerts/enabled"),
    (["alerts.oldestReadyJob.for=soon"], "/alerts/oldestReadyJob/for"),
    (["alerts.disabled[0]=NoSuchAlert"], "/alerts/disabled/0"),
    (["console.enabled=yes"], "/console/enabled"),
    (["console.service.port=0"], "/console/service/port"),
]


@pytest.mark.parametrize(("sets", "field"), BAD_VALUES, ids=[b[1] + ":" + b[0][-1] for b in BAD_VALUES])
def test_schema_rejects_bad_values(sets: list[str], field: str) -> None:
    args = sets if sets[0].startswith("--") else set_args(sets)
    proc = run_helm("template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert "schema" in proc.stderr and field in proc.stderr, proc.stderr


def test_values_yaml_satisfies_its_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(values)
    # Every top-level key in values.yaml is described by the schema (and the reverse).
    assert set(values) == set(schema["properties"]) - {"global"}


# --------------------------------------------------------------------------- CRDs


def repo_crds() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))}


SHOAL_CRDS = {"queues.shoal.dev", "cronjobs.shoal.dev"}
KEEP = "helm.sh/resource-policy"


@cache
def templates_only(*sets: str) -> tuple[dict[str, Any], ...]:
    """What the release itself manages, i.e. what `helm upgrade` applies: the templates, not
    the crds/ folder (Helm installs that once and never upgrades it)."""
    proc = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(sets))
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def crds_by_name(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in find(docs, "CustomResourceDefinition")}


def test_chart_crds_identical_to_repo_crds() -> None:
    source = repo_crds()
    hint = "run: python scripts/sync_chart_crds.py (it copies crds/*.yaml into charts/shoal/files/crds/)"
    assert source, f"no CRDs in crds/*.yaml yet; once they exist, {hint}"
    for name, content in source.items():
        chart_copy = CHART / "files" / "crds" / name
        assert chart_copy.is_file(), f"charts/shoal/files/crds/{name} is missing; {hint}"
        assert chart_copy.read_bytes() == content, f"charts/shoal/files/crds/{name} differs from crds/{name}; {hint}"
    # The crds/ folder (installed once, never upgraded) holds only kopf's peering CRDs.
    assert sorted(p.name for p in (CHART / "crds").glob("*")) == ["kopf-peering.yaml"]
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sync_chart_crds.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{proc.stderr}\n{hint}"


def test_rendered_crds_include_shoal_kinds() -> None:
    docs = render("defaults")
    kinds = {(d["spec"]["group"], d["spec"]["names"]["kind"]) for d in find(docs, "CustomResourceDefinition")}
    assert {("shoal.dev", "Queue"), ("shoal.dev", "CronJob")} <= kinds, kinds


def test_helm_upgrade_updates_the_crds_and_uninstall_keeps_them() -> None:
    """The Shoal CRDs are templates: part of what every `helm upgrade` applies, as in crds/
    (only labels and the keep policy added), and kept by `helm uninstall`."""
    crds = crds_by_name(templates_only())
    assert set(crds) == SHOAL_CRDS, "the Shoal CRDs must be templates (Helm never upgrades crds/)"
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        rendered = copy.deepcopy(crds[source["metadata"]["name"]])
        meta = rendered.pop("metadata")
        assert rendered == {k: v for k, v in source.items() if k != "metadata"}, path.name
        assert meta["annotations"] == {KEEP: "keep"}
        assert source["metadata"]["labels"].items() <= meta["labels"].items()
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # Only kopf's peering CRDs stay in crds/: the release's ClusterKopfPeering needs them first.
    with_crds = crds_by_name(render("defaults"))
    assert set(with_crds) - SHOAL_CRDS == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_crds_managed_elsewhere() -> None:
    """crds.install=false renders no Shoal CRD (they are applied from crds/ by whoever owns
    them); crds.keep=false drops the keep policy."""
    assert not crds_by_name(templates_only("crds.install=false"))
    assert set(crds_by_name(render("crds-off"))) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for crd in crds_by_name(templates_only("crds.keep=false")).values():
        assert KEEP not in (crd["metadata"].get("annotations") or {})


def test_notes_tell_what_to_do_next() -> None:
    proc = run_helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kind: Queue" in notes
    assert "get queues -w" in notes
    assert "create secret generic shoal-database" in notes
