"""Pure, table-driven tests of the operator's builders: Deployment, QueueConfig, the initial
replica count, conditions, drift patches, status patches and peering priority. No cluster, no
database. The spec parser itself is tested in test_queue_spec.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shoal.errors import ValidationError
from shoal.operator import conditions as c
from shoal.operator.deployment import Owner, build_deployment, contains, drift_patch, worker_args
from shoal.operator.priority import derive_priority, peering_priority
from shoal.operator.queue_config import queue_config
from shoal.operator.queue_spec import QueueSpec, parse_queue_spec, scaling_policy
from shoal.operator.scale_status import status_patch
from shoal.operator.scaling import database_reachable
from shoal.ratelimit import RateLimit

OWNER = Owner(name="emails", namespace="prod", uid="uid-1")
BASE: dict[str, Any] = {"databaseSecretRef": {"name": "db"}, "worker": {"image": "img:1"}}


def spec(**extra: Any) -> dict[str, Any]:
    s = copy.deepcopy(BASE)
    for key, value in extra.items():
        if key == "worker":
            s["worker"].update(value)
        else:
            s[key] = value
    return s


def qspec(**extra: Any) -> QueueSpec:
    """The parsed spec of Queue prod/emails, with Postgres queue name "q" unless given."""
    return parse_queue_spec("prod", "emails", spec(**{"queueName": "q", **extra}))


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def ctr(dep: dict[str, Any]) -> dict[str, Any]:
    return pod(dep)["containers"][0]  # type: ignore[no-any-return]


def test_deployment_identity_owner_and_labels() -> None:
    dep = build_deployment(OWNER, qspec(), 2)
    assert dep["metadata"]["name"] == "emails-workers" and dep["metadata"]["namespace"] == "prod"
    assert dep["metadata"]["ownerReferences"] == [{"apiVersion": "shoal.dev/v1alpha1", "kind": "Queue",
                                                   "name": "emails", "uid": "uid-1", "controller": True,
                                                   "blockOwnerDeletion": True}]
    labels = {"app.kubernetes.io/name": "shoal", "app.kubernetes.io/component": "worker",
              "app.kubernetes.io/instance": "emails", "shoal.dev/queue": "emails"}
    assert dep["spec"]["selector"]["matchLabels"] == labels
    assert labels.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert labels.items() <= dep["metadata"]["labels"].items()
    assert dep["spec"]["replicas"] == 2


def test_database_url_only_through_secret_key_ref() -> None:
    dep = build_deployment(OWNER, qspec(databaseSecretRef={"name": "pg", "key": "dsn"},
                                            worker={"env": [{"name": "SHOAL_DATABASE_URL", "value": "postgres://x"},
                                                            {"name": "A", "value": "1"}]}), 1)
    env = ctr(dep)["env"]
    assert env[0] == {"name": "SHOAL_DATABASE_URL",
                      "valueFrom": {"secretKeyRef": {"name": "pg", "key": "dsn"}}}
    assert env[1] == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert [e["name"] for e in env] == ["SHOAL_DATABASE_URL", "POD_NAME", "A"]  # no literal override
    assert "postgres://" not in repr(dep)
    default_key = build_deployment(OWNER, qspec(), 1)
    assert ctr(default_key)["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "url"


def test_probes_ports_and_security() -> None:
    dep = build_deployment(OWNER, qspec(), 1)
    container = ctr(dep)
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert pod(dep)["securityContext"]["runAsUser"] == 10001
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod(dep)["volumes"][0]["name"] == "tmp" and "emptyDir" in pod(dep)["volumes"][0]


def test_worker_overrides_from_the_spec() -> None:
    worker = {"imagePullPolicy": "Always", "resources": {"limits": {"memory": "1Gi"}},
              "nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "k", "operator": "Exists"}],
              "serviceAccountName": "sa", "podAnnotations": {"a": "b"}}
    dep = build_deployment(OWNER, qspec(worker=worker), 1)
    assert ctr(dep)["imagePullPolicy"] == "Always"
    assert ctr(dep)["resources"] == {"limits": {"memory": "1Gi"}}
    assert pod(dep)["nodeSelector"] == {"disk": "ssd"}
    assert pod(dep)["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod(dep)["serviceAccountName"] == "sa"
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    plain = build_deployment(OWNER, qspec(), 1)
    for key in ("nodeSelector", "tolerations", "serviceAccountName"):
        assert key not in pod(plain)
    assert "imagePullPolicy" not in ctr(plain)


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, ["worker", "--queue", "q", "--concurrency", "10", "--metrics-port", "9090",
          "--backoff-base", "1", "--backoff-max", "300", "--drain-timeout", "30"]),
    ({"concurrency": 3, "retry": {"backoffBaseSeconds": 0.5, "backoffMaxSeconds": 60}, "jobTimeoutSeconds": 120,
      "worker": {"tasks": ["a.tasks", "b"], "drainTimeoutSeconds": 900}},
     ["worker", "--queue", "q", "--concurrency", "3", "--metrics-port", "9090", "--backoff-base", "0.5",
      "--backoff-max", "60", "--drain-timeout", "900", "--job-timeout", "120", "--tasks", "a.tasks", "b"]),
])
def test_worker_command(extra: dict[str, Any], expected: list[str]) -> None:
    assert worker_args(qspec(**extra)) == expected
    assert ctr(build_deployment(OWNER, qspec(**extra), 1))["args"] == expected


def test_long_queue_names_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        build_deployment(Owner(name="x" * 64, namespace="n", uid="u"), qspec(), 1)
    assert err.value.field == "metadata.name"


@pytest.mark.parametrize(("namespace", "name", "extra", "expected"), [
    ("prod", "emails", {}, "prod.emails"),
    ("prod", "emails", {"queueName": "shared"}, "shared"),
])
def test_postgres_queue_name(namespace: str, name: str, extra: dict[str, Any], expected: str) -> None:
    assert parse_queue_spec(namespace, name, spec(**extra)).queue_name == expected


def test_postgres_queue_name_too_long_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        parse_queue_spec("n" * 63, "q" * 100, spec())
    assert err.value.field == "spec.queueName" and "set spec.queueName" in str(err.value)


def test_queue_config_mapping() -> None:
    cfg = queue_config(parse_queue_spec("prod", "emails", spec(
        rateLimit="50/s", concurrencyLimit=100, paused=True, retry={"maxAttempts": 7},
        retention={"succeededSeconds": 3600, "failedSeconds": 60})))
    assert cfg.name == "prod.emails" and cfg.paused
    assert cfg.rate_limit == RateLimit(50, 1) and cfg.concurrency_limit == 100
    assert (cfg.max_attempts, cfg.keep_succeeded_seconds, cfg.keep_failed_seconds) == (7, 3600, 60)
    defaults = queue_config(parse_queue_spec("prod", "emails", spec()))
    assert (defaults.rate_limit, defaults.concurrency_limit, defaults.max_attempts, defaults.paused,
            defaults.keep_succeeded_seconds, defaults.keep_failed_seconds) == (None, None, 5, False, 0, None)
    with pytest.raises(ValidationError) as err:
        parse_queue_spec("prod", "emails", spec(rateLimit="fast"))
    assert err.value.field == "spec.rateLimit"


@pytest.mark.parametrize(("autoscaling", "initial", "autoscaled"), [
    ({}, 1, True),                                         # the CRD's defaults: 1..10
    ({"minReplicas": 3, "maxReplicas": 5}, 3, True),
    ({"minReplicas": 0, "scaleToZero": True}, 0, True),    # scale to zero allows 0
    ({"minReplicas": 0}, 1, True),                         # ... nothing else does
    ({"minReplicas": 2, "maxReplicas": 2}, 2, False),      # autoscaling off: starts there, then owned elsewhere
    ({"minReplicas": 0, "maxReplicas": 1, "scaleToZero": True}, 0, True),
])
def test_a_new_deployment_starts_at_the_floor(autoscaling: dict[str, Any], initial: int, autoscaled: bool) -> None:
    """The reconciler creates a Deployment with the policy's floor; after that only the
    autoscaler writes replicas (and not at all while autoscaling is off)."""
    policy = scaling_policy(qspec(autoscaling=autoscaling))
    assert policy.effective_min == initial and policy.autoscaling_enabled == autoscaled


def test_drift_patch() -> None:
    desired = build_deployment(OWNER, qspec(), 2)
    live = copy.deepcopy(desired)
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # API server defaults are not drift
    live["status"] = {"replicas": 2}
    assert drift_patch(live, desired) is None
    live["spec"]["replicas"] = 40  # the autoscaler's (or KEDA's) choice: never drift, whatever the bounds
    assert drift_patch(live, desired) is None
    ctr(live)["image"] = "evil"
    ctr(live)["env"].append({"name": "X", "value": "1"})
    patch = drift_patch(live, desired)
    assert patch is not None and set(patch) == {"spec"} and "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["spec"]["containers"] == desired["spec"]["template"]["spec"]["containers"]
    # A spec change that only removes a field is still noticed (the template hash changed).
    with_selector = build_deployment(OWNER, qspec(worker={"nodeSelector": {"a": "b"}}), 2)
    patch = drift_patch(with_selector, desired)
    assert patch is not None and patch["spec"]["template"]["spec"]["nodeSelector"] is None


# ---------------------------------------------------------------- the pod template: every field, and its removal


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386) as the API server does."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def served(dep: dict[str, Any]) -> dict[str, Any]:
    """A Deployment as the API server returns it: some defaults added, serviceAccountName
    mirrored into its deprecated alias, a `kubectl rollout restart` annotation."""
    live = copy.deepcopy(dep)
    pod(live)["dnsPolicy"] = "ClusterFirst"
    if "serviceAccountName" in pod(live):
        pod(live)["serviceAccount"] = pod(live)["serviceAccountName"]
    live["spec"]["template"]["metadata"].setdefault("annotations", {})[
        "kubectl.kubernetes.io/restartedAt"] = "2026-01-01T00:00:00Z"
    return live


AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
SPREAD = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]
VOLUMES = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}],
           "volumeMounts": [{"name": "data", "mountPath": "/data"}]}

# spec.worker fields → (where they land in the Deployment, what is found there with and without them).
WHERE: dict[str, Any] = {
    "pod": lambda d: pod(d), "container": lambda d: ctr(d),
    "labels": lambda d: d["spec"]["template"]["metadata"]["labels"],
    "annotations": lambda d: d["spec"]["template"]["metadata"].get("annotations", {}),
}
FIELDS: list[tuple[dict[str, Any], str, str, Any]] = [
    ({"imagePullSecrets": [{"name": "regcred"}]}, "pod", "imagePullSecrets", [{"name": "regcred"}]),
    ({"affinity": AFFINITY}, "pod", "affinity", AFFINITY),
    ({"topologySpreadConstraints": SPREAD}, "pod", "topologySpreadConstraints", SPREAD),
    ({"priorityClassName": "batch-low"}, "pod", "priorityClassName", "batch-low"),
    ({"nodeSelector": {"disk": "ssd"}}, "pod", "nodeSelector", {"disk": "ssd"}),
    ({"tolerations": [{"key": "k", "operator": "Exists"}]}, "pod", "tolerations", [{"key": "k", "operator": "Exists"}]),
    ({"serviceAccountName": "sa"}, "pod", "serviceAccountName", "sa"),
    ({"envFrom": [{"secretRef": {"name": "s"}}]}, "container", "envFrom", [{"secretRef": {"name": "s"}}]),
    ({"imagePullPolicy": "Always"}, "container", "imagePullPolicy", "Always"),
    ({"podAnnotations": {"prometheus.io/scrape": "true"}}, "annotations", "prometheus.io/scrape", "true"),
    ({"podLabels": {"team": "mail"}}, "labels", "team", "mail"),
]


@pytest.mark.parametrize(("worker", "where", "key", "value"), FIELDS, ids=[f[2] for f in FIELDS])
def test_every_pod_field_reaches_the_deployment_and_removing_it_removes_it(
        worker: dict[str, Any], where: str, key: str, value: Any) -> None:
    with_it = build_deployment(OWNER, qspec(worker=worker), 2)
    assert WHERE[where](with_it)[key] == value
    without = build_deployment(OWNER, qspec(), 2)
    assert key not in WHERE[where](without)
    live = served(with_it)
    patch = drift_patch(live, without)
    assert patch is not None and "replicas" not in patch["spec"]
    after = merge_patch(live, patch)
    assert key not in WHERE[where](after), f"{key} stayed on the Deployment after the Queue dropped it"
    assert contains(after, without) and drift_patch(after, without) is None
    # What others added is kept: API server defaults, `kubectl rollout restart`.
    assert pod(after)["dnsPolicy"] == "ClusterFirst"
    assert WHERE["annotations"](after)["kubectl.kubernetes.io/restartedAt"] == "2026-01-01T00:00:00Z"


def test_resources_volumes_and_env_come_and_go() -> None:
    worker = {"resources": {"limits": {"memory": "1Gi"}}, "env": [{"name": "A", "value": "1"}], **VOLUMES}
    with_them = build_deployment(OWNER, qspec(worker=worker), 1)
    assert ctr(with_them)["resources"] == {"limits": {"memory": "1Gi"}}
    assert ctr(with_them)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": "/data"}]
    assert [v["name"] for v in pod(with_them)["volumes"]] == ["tmp", "data"]
    assert pod(with_them)["volumes"][1] == VOLUMES["volumes"][0]
    assert ctr(with_them)["env"][-1] == {"name": "A", "value": "1"}
    without = build_deployment(OWNER, qspec(), 1)
    patch = drift_patch(served(with_them), without)
    assert patch is not None
    after = merge_patch(served(with_them), patch)
    assert ctr(after)["resources"] == {} and [v["name"] for v in pod(after)["volumes"]] == ["tmp"]
    assert ctr(after)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert [e["name"] for e in ctr(after)["env"]] == ["SHOAL_DATABASE_URL", "POD_NAME"]


def test_keys_dropped_from_objects_and_metadata_are_deleted() -> None:
    """A merge patch merges objects: what the Queue dropped from nodeSelector, affinity, pod
    labels and annotations is set to null explicitly, and only that."""
    before = qspec(worker={"nodeSelector": {"disk": "ssd", "zone": "a"},
                           "affinity": {**AFFINITY, "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                               {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
                           "podAnnotations": {"a": "1", "b": "2"}, "podLabels": {"team": "mail", "tier": "low"},
                           "serviceAccountName": "sa"})
    after_spec = qspec(worker={"nodeSelector": {"disk": "ssd"}, "affinity": AFFINITY, "podAnnotations": {"a": "1"},
                               "podLabels": {"team": "mail"}})
    live = served(build_deployment(OWNER, before, 3))
    desired = build_deployment(OWNER, after_spec, 3)
    patch = drift_patch(live, desired)
    assert patch is not None
    template = patch["spec"]["template"]
    assert template["spec"]["nodeSelector"] == {"disk": "ssd", "zone": None}
    assert template["spec"]["affinity"]["podAntiAffinity"] is None
    assert template["metadata"]["annotations"] == {"a": "1", "b": None}  # restartedAt is not touched
    assert template["metadata"]["labels"]["tier"] is None
    assert template["spec"]["serviceAccountName"] is None and template["spec"]["serviceAccount"] is None
    result = merge_patch(live, patch)
    assert pod(result)["nodeSelector"] == {"disk": "ssd"} and pod(result)["affinity"] == AFFINITY
    assert "serviceAccountName" not in pod(result) and "serviceAccount" not in pod(result)
    assert result["spec"]["template"]["metadata"]["annotations"] == {
        "a": "1", "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}
    assert "tier" not in result["spec"]["template"]["metadata"]["labels"]
    assert result["spec"]["replicas"] == 3 and drift_patch(result, desired) is None


def test_the_operators_labels_win_and_select_the_pods() -> None:
    dep = build_deployment(OWNER, qspec(worker={"podLabels": {"team": "mail"}}), 1)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "mail" and dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    recorded = json.loads(dep["metadata"]["annotations"]["shoal.dev/pod-metadata"])
    assert recorded == {"annotations": [], "labels": ["team"]}


@pytest.mark.parametrize(("drain", "grace"), [(None, 45), (0, 15), (600, 615)])
def test_drain_timeout_sets_the_flag_and_the_grace_period(drain: int | None, grace: int) -> None:
    worker = {} if drain is None else {"drainTimeoutSeconds": drain}
    dep = build_deployment(OWNER, qspec(worker=worker), 1)
    args = ctr(dep)["args"]
    assert args[args.index("--drain-timeout") + 1] == str(30 if drain is None else drain)
    assert pod(dep)["terminationGracePeriodSeconds"] == grace


def test_a_full_pod_template_is_a_valid_deployment() -> None:
    """Every spec.worker field at once (the CRD test's full template) makes a Deployment the
    Kubernetes schema accepts, for the oldest and the newest Kubernetes known."""
    import kubernetes_validate
    from test_crd_schema import FULL_WORKER

    dep = build_deployment(OWNER, qspec(worker=FULL_WORKER), 2)
    for version in ("1.28.0", kubernetes_validate.utils.latest_version()):
        kubernetes_validate.validate(dep, version, strict=True)
    assert ctr(dep)["envFrom"] == FULL_WORKER["envFrom"] and pod(dep)["priorityClassName"] == "batch-low"
    assert pod(dep)["terminationGracePeriodSeconds"] == 615


def test_contains() -> None:
    assert contains({"a": 1, "b": 2}, {"a": 1})
    assert not contains({"a": [1, 2]}, {"a": [1]})
    assert not contains({"a": {"b": 1}}, {"a": {"b": 2}})


# ---------------------------------------------------------------- conditions

def test_ready_summarises_causes() -> None:
    ok = [c.Condition.true(c.SPEC_VALID, "Valid"), c.Condition.true(c.DATABASE_REACHABLE, "Connected")]
    assert c.ready(ok).status == "True"
    bad = [*ok, c.Condition.unknown(c.DEPLOYMENT_AVAILABLE, "Progressing", "waiting"),
           c.Condition.false(c.QUEUE_DECLARED, "DeclareFailed", "spec.x: fix it")]
    ready = c.ready(bad)
    assert (ready.status, ready.reason, ready.message) == ("False", "DeclareFailed", "spec.x: fix it")
    assert c.ready(ok + bad[2:3]).status == "Unknown"
    assert [x.type for x in c.with_ready(ok)] == ["Ready", "SpecValid", "DatabaseReachable"]


def test_transition_times_and_events() -> None:
    first = [c.Condition.false(c.DATABASE_REACHABLE, "SecretNotFound", "spec.databaseSecretRef.name: create it"),
             c.Condition.true(c.SPEC_VALID, "Valid"), c.Condition.unknown(c.QUEUE_DECLARED, "Waiting", "")]
    stored = c.to_status(first, None, "T1", 3)
    assert all(s["lastTransitionTime"] == "T1" and s["observedGeneration"] == 3 for s in stored)
    events = c.transitions(first, None)
    assert [(e.event_type, e.reason) for e in events] == [("Warning", "SecretNotFound")]
    assert "spec.databaseSecretRef.name" in events[0].message
    # Same again: no events, times kept.
    assert c.transitions(first, stored) == []
    assert c.to_status(first, stored, "T2", 3) == stored
    # Healed: one Normal event, the transition time moves.
    healed = [c.Condition.true(c.DATABASE_REACHABLE, "Connected"), *first[1:]]
    events = c.transitions(healed, stored)
    assert [(e.event_type, e.reason) for e in events] == [("Normal", "Connected")]
    after = {s["type"]: s for s in c.to_status(healed, stored, "T3", 3)}
    assert after[c.DATABASE_REACHABLE]["lastTransitionTime"] == "T3"
    assert after[c.SPEC_VALID]["lastTransitionTime"] == "T1"


# ---------------------------------------------------------------- peering priority

def test_priorities_differ_per_replica_and_can_be_overridden() -> None:
    a = peering_priority({"POD_NAME": "shoal-operator-7d9f-abcde"})
    b = peering_priority({"POD_NAME": "shoal-operator-7d9f-fghij"})
    assert a != b and 1 <= a < 2**31 and 1 <= b < 2**31
    assert a == derive_priority("shoal-operator-7d9f-abcde")  # stable across restarts of one pod name
    assert peering_priority({"POD_NAME": "x", "SHOAL_OPERATOR_PRIORITY": "42"}) == 42
    assert peering_priority({"HOSTNAME": "h"}) == derive_priority("h")
    with pytest.raises(Exception, match="SHOAL_OPERATOR_PRIORITY"):
        peering_priority({"SHOAL_OPERATOR_PRIORITY": "high"})


# ---------------------------------------------------------------- autoscaler (Kubernetes backend)

def test_scaling_policy_from_the_spec() -> None:
    policy = scaling_policy(qspec(concurrency=5, rateLimit="120/m", concurrencyLimit=12, autoscaling={
        "minReplicas": 0, "scaleToZero": True, "maxReplicas": 4, "scaleDownDelaySeconds": 2,
        "targetPerReplica": 8, "pollIntervalSeconds": 0.5}))
    assert (policy.min_replicas, policy.max_replicas, policy.concurrency, policy.target, policy.scale_down_delay,
            policy.scale_to_zero, policy.rate_limit, policy.concurrency_limit) == (0, 4, 5, 8, 2.0, True, 2.0, 12)
    defaults = scaling_policy(qspec())  # the CRD's defaults when the API server did not apply them
    assert (defaults.min_replicas, defaults.max_replicas, defaults.concurrency, defaults.scale_down_delay,
            defaults.rate_limit, defaults.concurrency_limit) == (1, 10, 10, 60.0, None, None)
    with pytest.raises(ValidationError) as err:
        qspec(autoscaling={"minReplicas": 5, "maxReplicas": 2})
    assert err.value.field == "spec.autoscaling.minReplicas"
    assert "must be <= spec.autoscaling.maxReplicas (2)" in str(err.value)


WRITTEN = {"pending": 5, "running": 1, "replicas": 2, "desiredReplicas": 2}


@pytest.mark.parametrize(("wanted", "last_patch", "expected"), [
    (WRITTEN, 0.0, None),                                                # nothing changed: no patch
    ({**WRITTEN, "pending": 6}, 9.0, None),                              # counts only, 1 s after the last
    ({**WRITTEN, "pending": 6}, 5.0, {"pending": 6}),                    # counts only, 5 s after
    ({**WRITTEN, "pending": 6}, None, {"pending": 6}),                   # first patch of this loop
    ({**WRITTEN, "replicas": 3, "desiredReplicas": 3, "pending": 9}, 9.9,  # a scale: at once, with counts
     {"replicas": 3, "desiredReplicas": 3, "pending": 9}),
    ({**WRITTEN, "lastScaleTime": "t", "lastScaleReason": "r"}, 9.9, {"lastScaleTime": "t", "lastScaleReason": "r"}),
    ({**WRITTEN, "replicas": 7}, 9.9, {"replicas": 7}),                  # someone else scaled: shown at once
])
def test_status_patch(wanted: dict[str, Any], last_patch: float | None, expected: dict[str, Any] | None) -> None:
    assert status_patch(WRITTEN, wanted, now=10.0, last_patch=last_patch, min_interval=5.0) == expected


def test_database_reachable_reads_the_reconcilers_condition() -> None:
    def status(value: str) -> dict[str, Any]:
        return {"conditions": [{"type": "Ready", "status": "True"}, {"type": "DatabaseReachable", "status": value}]}

    assert database_reachable(status("True")) is True
    assert database_reachable(status("False")) is False
    assert database_reachable(status("Unknown")) is None
    assert database_reachable({}) is None
