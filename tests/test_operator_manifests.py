"""Pure, table-driven tests of the operator's builders: Deployment, QueueConfig, replicas,
conditions, drift patches and peering priority. No cluster, no database."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shoal.errors import ValidationError
from shoal.operator import conditions as c
from shoal.operator.deployment import Owner, build_deployment, contains, drift_patch, worker_args
from shoal.operator.priority import derive_priority, peering_priority
from shoal.operator.queue_config import postgres_queue_name, queue_config
from shoal.operator.replicas import autoscaling_enabled, replica_bounds, replicas_to_set
from shoal.operator.scaling import database_reachable, poll_interval, queue_policy, retry_delay, status_patch
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


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def ctr(dep: dict[str, Any]) -> dict[str, Any]:
    return pod(dep)["containers"][0]  # type: ignore[no-any-return]


def test_deployment_identity_owner_and_labels() -> None:
    dep = build_deployment(OWNER, "prod.emails", spec(), 2)
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
    dep = build_deployment(OWNER, "q", spec(databaseSecretRef={"name": "pg", "key": "dsn"},
                                            worker={"env": [{"name": "SHOAL_DATABASE_URL", "value": "postgres://x"},
                                                            {"name": "A", "value": "1"}]}), 1)
    env = ctr(dep)["env"]
    assert env[0] == {"name": "SHOAL_DATABASE_URL",
                      "valueFrom": {"secretKeyRef": {"name": "pg", "key": "dsn"}}}
    assert [e["name"] for e in env] == ["SHOAL_DATABASE_URL", "A"]  # no literal override
    assert "postgres://" not in repr(dep)
    default_key = build_deployment(OWNER, "q", spec(), 1)
    assert ctr(default_key)["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "url"


def test_probes_ports_and_security() -> None:
    dep = build_deployment(OWNER, "q", spec(), 1)
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
    dep = build_deployment(OWNER, "q", spec(worker=worker), 1)
    assert ctr(dep)["imagePullPolicy"] == "Always"
    assert ctr(dep)["resources"] == {"limits": {"memory": "1Gi"}}
    assert pod(dep)["nodeSelector"] == {"disk": "ssd"}
    assert pod(dep)["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod(dep)["serviceAccountName"] == "sa"
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    plain = build_deployment(OWNER, "q", spec(), 1)
    for key in ("nodeSelector", "tolerations", "serviceAccountName"):
        assert key not in pod(plain)
    assert "imagePullPolicy" not in ctr(plain)


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, ["worker", "--queue", "q", "--concurrency", "10", "--metrics-port", "9090",
          "--backoff-base", "1", "--backoff-max", "300"]),
    ({"concurrency": 3, "retry": {"backoffBaseSeconds": 0.5, "backoffMaxSeconds": 60}, "jobTimeoutSeconds": 120,
      "worker": {"tasks": ["a.tasks", "b"]}},
     ["worker", "--queue", "q", "--concurrency", "3", "--metrics-port", "9090", "--backoff-base", "0.5",
      "--backoff-max", "60", "--job-timeout", "120", "--tasks", "a.tasks", "b"]),
])
def test_worker_command(extra: dict[str, Any], expected: list[str]) -> None:
    assert worker_args("q", spec(**extra)) == expected
    assert ctr(build_deployment(OWNER, "q", spec(**extra), 1))["args"] == expected


def test_long_queue_names_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        build_deployment(Owner(name="x" * 64, namespace="n", uid="u"), "q", spec(), 1)
    assert err.value.field == "metadata.name"


@pytest.mark.parametrize(("namespace", "name", "extra", "expected"), [
    ("prod", "emails", {}, "prod.emails"),
    ("prod", "emails", {"queueName": "shared"}, "shared"),
])
def test_postgres_queue_name(namespace: str, name: str, extra: dict[str, Any], expected: str) -> None:
    assert postgres_queue_name(namespace, name, spec(**extra)) == expected


def test_postgres_queue_name_too_long_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        postgres_queue_name("n" * 63, "q" * 100, spec())
    assert err.value.field == "spec.queueName" and "set spec.queueName" in str(err.value)


def test_queue_config_mapping() -> None:
    cfg = queue_config("prod", "emails", spec(rateLimit="50/s", concurrencyLimit=100, paused=True,
                                              retry={"maxAttempts": 7},
                                              retention={"succeededSeconds": 3600, "failedSeconds": 60}))
    assert cfg.name == "prod.emails" and cfg.paused
    assert cfg.rate_limit == RateLimit(50, 1) and cfg.concurrency_limit == 100
    assert (cfg.max_attempts, cfg.keep_succeeded_seconds, cfg.keep_failed_seconds) == (7, 3600, 60)
    defaults = queue_config("prod", "emails", spec())
    assert (defaults.rate_limit, defaults.concurrency_limit, defaults.max_attempts, defaults.paused,
            defaults.keep_succeeded_seconds, defaults.keep_failed_seconds) == (None, None, 5, False, 0, None)
    with pytest.raises(ValidationError) as err:
        queue_config("prod", "emails", spec(rateLimit="fast"))
    assert err.value.field == "spec.rateLimit"


@pytest.mark.parametrize(("autoscaling", "current", "expected"), [
    ({}, None, 1),                                        # new Deployment: the floor
    ({"minReplicas": 3, "maxReplicas": 5}, None, 3),
    ({"minReplicas": 0, "scaleToZero": True}, None, 0),   # scale to zero allows 0
    ({"minReplicas": 0}, None, 1),                        # ... nothing else does
    ({"minReplicas": 2, "maxReplicas": 5}, 4, None),      # a scaler's count within bounds is kept
    ({"minReplicas": 2, "maxReplicas": 5}, 1, 2),         # raised to a new minimum
    ({"minReplicas": 2, "maxReplicas": 5}, 9, 5),         # lowered to a new maximum
    ({"minReplicas": 2, "maxReplicas": 2}, None, 2),      # autoscaling off: a new Deployment gets the count
    ({"minReplicas": 2, "maxReplicas": 2}, 5, None),      # ... then whoever owns it (KEDA, HPA) keeps theirs
    ({"minReplicas": 2, "maxReplicas": 2}, 0, None),
    ({"minReplicas": 0, "maxReplicas": 1, "scaleToZero": True}, 3, 1),  # 0..1 with scale to zero: autoscaled
])
def test_replicas_to_set(autoscaling: dict[str, Any], current: int | None, expected: int | None) -> None:
    assert replicas_to_set(autoscaling, current) == expected


def test_replica_bounds_match_the_scaler_policy() -> None:
    """The operator may not import the scaler, so its floor is checked against Policy here."""
    from shoal.scaler.decision import Policy

    for auto in ({}, {"minReplicas": 0, "scaleToZero": True, "maxReplicas": 3},
                 {"minReplicas": 4, "maxReplicas": 4}, {"minReplicas": 2, "maxReplicas": 9}):
        policy = Policy.from_spec(auto, concurrency=1)
        assert replica_bounds(auto) == (policy.effective_min, policy.max_replicas)
        assert autoscaling_enabled(auto) == policy.autoscaling_enabled


def test_drift_patch() -> None:
    desired = build_deployment(OWNER, "q", spec(), 2)
    live = copy.deepcopy(desired)
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # API server defaults are not drift
    live["status"] = {"replicas": 2}
    assert drift_patch(live, desired, None) is None
    live["spec"]["replicas"] = 4  # the autoscaler's choice
    assert drift_patch(live, desired, None) is None
    assert drift_patch(live, desired, 5) == {"spec": {"replicas": 5}}
    ctr(live)["image"] = "evil"
    ctr(live)["env"].append({"name": "X", "value": "1"})
    patch = drift_patch(live, desired, None)
    assert patch is not None and set(patch) == {"spec"} and "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["spec"]["containers"] == desired["spec"]["template"]["spec"]["containers"]
    # A spec change that only removes a field is still noticed (the template hash changed).
    with_selector = build_deployment(OWNER, "q", spec(worker={"nodeSelector": {"a": "b"}}), 2)
    patch = drift_patch(with_selector, desired, None)
    assert patch is not None and patch["spec"]["template"]["spec"]["nodeSelector"] is None


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

def test_queue_policy_from_spec() -> None:
    policy = queue_policy(spec(concurrency=5, rateLimit="120/m", concurrencyLimit=12, autoscaling={
        "minReplicas": 0, "scaleToZero": True, "maxReplicas": 4, "scaleDownDelaySeconds": 2,
        "targetPerReplica": 8, "pollIntervalSeconds": 0.5}))
    assert (policy.min_replicas, policy.max_replicas, policy.concurrency, policy.target, policy.scale_down_delay,
            policy.scale_to_zero, policy.rate_limit, policy.concurrency_limit) == (0, 4, 5, 8, 2.0, True, 2.0, 12)
    defaults = queue_policy(spec())  # the CRD's defaults when the API server did not apply them
    assert (defaults.min_replicas, defaults.max_replicas, defaults.concurrency, defaults.scale_down_delay,
            defaults.rate_limit, defaults.concurrency_limit) == (1, 10, 10, 60.0, None, None)
    assert not queue_policy(spec(autoscaling={"minReplicas": 3, "maxReplicas": 3})).autoscaling_enabled
    with pytest.raises(ValidationError):
        queue_policy(spec(autoscaling={"minReplicas": 5, "maxReplicas": 2}))


@pytest.mark.parametrize(("autoscaling", "expected"), [
    ({}, 1.0), ({"pollIntervalSeconds": 2.5}, 2.5), ({"pollIntervalSeconds": 0}, 1.0),
    ({"pollIntervalSeconds": "soon"}, 1.0), ({"pollIntervalSeconds": 0.001}, 0.05),
    ({"pollIntervalSeconds": 1e9}, 3600.0),
])
def test_poll_interval(autoscaling: dict[str, Any], expected: float) -> None:
    assert poll_interval({"autoscaling": autoscaling}) == expected


def test_retry_delay_backs_off_to_a_cap() -> None:
    assert [retry_delay(1.0, n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(0.2, 1) == 1.0 and retry_delay(10, 1) == 10 and retry_delay(10, 99) == 30


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
