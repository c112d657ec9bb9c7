"""The one parser of a Queue's spec (shoal.operator.queue_spec) against the CRD, its source of truth.

* Every ``default:`` in the Queue CRD equals the Python default, and parsing a spec the API
  server defaulted gives the same value as parsing it undefaulted (the emulator and old
  servers do not default).
* Every good manifest parses; a bad one is refused naming the same field as the API server,
  except for the rules only the API server applies (listed, with why).
* Errors name the spec path and the fix, including the scaling decision's own checks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_crd_schema import BAD, EXPECT, GOOD, _kind_schema, apply_defaults

from shoal.errors import ValidationError
from shoal.operator.queue_reconciler import reconcile_queue
from shoal.operator.queue_spec import (
    Autoscaling,
    QueueSpec,
    Retention,
    Retry,
    SecretRef,
    WorkerTemplate,
    parse_queue_spec,
    scaling_policy,
)
from shoal.ratelimit import RateLimit

SCHEMA = _kind_schema("Queue")["properties"]["spec"]
MINIMAL: dict[str, Any] = {"databaseSecretRef": {"name": "db"}, "worker": {"image": "img:1"}}

# Each CRD default (path under spec) → the parsed value that must equal it.
DEFAULTS: dict[str, Callable[[QueueSpec], Any]] = {
    "databaseSecretRef.key": lambda q: q.database_secret_ref.key,
    "worker.drainTimeoutSeconds": lambda q: q.worker.drain_timeout_seconds,
    "concurrency": lambda q: q.concurrency,
    "retry": lambda q: q.retry,
    "retry.maxAttempts": lambda q: q.retry.max_attempts,
    "retry.backoffBaseSeconds": lambda q: q.retry.backoff_base_seconds,
    "retry.backoffMaxSeconds": lambda q: q.retry.backoff_max_seconds,
    "retention": lambda q: q.retention,
    "retention.succeededSeconds": lambda q: q.retention.succeeded_seconds,
    "paused": lambda q: q.paused,
    "deletionPolicy": lambda q: q.deletion_policy,
    "autoscaling": lambda q: q.autoscaling,
    "autoscaling.minReplicas": lambda q: q.autoscaling.min_replicas,
    "autoscaling.maxReplicas": lambda q: q.autoscaling.max_replicas,
    "autoscaling.scaleDownDelaySeconds": lambda q: q.autoscaling.scale_down_delay_seconds,
    "autoscaling.scaleToZero": lambda q: q.autoscaling.scale_to_zero,
    "autoscaling.pollIntervalSeconds": lambda q: q.autoscaling.poll_interval_seconds,
}
# An object default ({}) means "the object with its own defaults".
OBJECT_DEFAULTS = {"retry": Retry(), "retention": Retention(), "autoscaling": Autoscaling()}

# Bad manifests (by name) the parser accepts on purpose: only the API server applies these rules.
SERVER_ONLY = {
    "bad-task-module": "the module-name pattern (a bad name fails the worker's import, visibly)",
    "typo-field": "unknown fields are pruned or refused by the server",
    "typo-nested-field": "unknown fields are pruned or refused by the server",
    "scale-to-zero-with-min": "CEL: scaleToZero needs minReplicas 0 (Python keeps the higher minimum)",
    "scale-to-zero-default-min": "CEL: scaleToZero needs minReplicas 0 (Python keeps the higher minimum)",
    "min-zero-without-scale-to-zero": "CEL: minReplicas 0 needs scaleToZero (Python floors it at 1 instead)",
    "renamed-queue": "CEL transition rule: queueName is immutable (needs the old object)",
    "queue-name-added-later": "CEL transition rule: queueName is immutable (needs the old object)",
    "queue-name-removed": "CEL transition rule: queueName is immutable (needs the old object)",
}


def crd_defaults(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, Any]]:
    for name, sub in node.get("properties", {}).items():
        where = f"{path}.{name}" if path else name
        if "default" in sub:
            yield where, sub["default"]
        yield from crd_defaults(sub, where)


def test_python_defaults_are_the_crds() -> None:
    parsed = parse_queue_spec("ns", "q", MINIMAL)
    found = dict(crd_defaults(SCHEMA))
    assert found.keys() == DEFAULTS.keys(), "map each new CRD default in DEFAULTS (and in queue_spec.py)"
    for path, default in found.items():
        expected = OBJECT_DEFAULTS[path] if default == {} else default
        assert DEFAULTS[path](parsed) == expected, path


@pytest.mark.parametrize("manifest", [m for m in GOOD if m.values[0]["kind"] == "Queue"])
def test_good_manifests_parse_the_same_defaulted_or_not(manifest: dict[str, Any]) -> None:
    doc = manifest
    raw = doc["spec"]
    defaulted = apply_defaults(SCHEMA, copy.deepcopy(raw))
    name = doc["metadata"]["name"]
    assert parse_queue_spec("ns", name, raw) == parse_queue_spec("ns", name, defaulted)


@pytest.mark.parametrize("manifest", [m for m in BAD if m.values[0]["kind"] == "Queue"])
def test_bad_manifests_are_refused_naming_the_servers_field(manifest: dict[str, Any]) -> None:
    doc = manifest
    expected = doc["metadata"]["annotations"][EXPECT]
    spec = apply_defaults(SCHEMA, copy.deepcopy(doc["spec"]))
    name = doc["metadata"]["name"]
    if name in SERVER_ONLY:
        parse_queue_spec("ns", name, spec)
        return
    with pytest.raises(ValidationError) as err:
        parse_queue_spec("ns", name, spec)
    field = err.value.field
    assert field.startswith(expected) or expected.startswith(field), (field, expected)


def test_a_full_spec_parses_to_typed_values() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    spread = {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
    spec = {
        "queueName": "shared.mail", "databaseSecretRef": {"name": "pg", "key": "dsn"},
        "worker": {"image": "img:2", "imagePullPolicy": "Always", "imagePullSecrets": [{"name": "regcred"}],
                   "tasks": ["app.tasks"], "env": [{"name": "A", "value": "1"}],
                   "envFrom": [{"configMapRef": {"name": "cfg"}}], "resources": {"limits": {"cpu": "1"}},
                   "volumes": [{"name": "data", "emptyDir": {}}], "volumeMounts": [{"name": "data", "mountPath": "/d"}],
                   "nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "k", "operator": "Exists"}],
                   "affinity": affinity, "topologySpreadConstraints": [spread], "priorityClassName": "low",
                   "serviceAccountName": "sa", "podAnnotations": {"a": "b"}, "podLabels": {"team": "mail"},
                   "drainTimeoutSeconds": 300},
        "concurrency": 7, "rateLimit": "20/s", "concurrencyLimit": 30,
        "retry": {"maxAttempts": 3, "backoffBaseSeconds": 0.5, "backoffMaxSeconds": 60},
        "jobTimeoutSeconds": 120, "retention": {"succeededSeconds": 3600, "failedSeconds": 60},
        "paused": True, "deletionPolicy": "Delete",
        "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetPerReplica": 8, "scaleDownDelaySeconds": 2,
                        "scaleToZero": True, "pollIntervalSeconds": 0.5},
    }
    assert parse_queue_spec("prod", "mail", spec) == QueueSpec(
        queue_name="shared.mail", database_secret_ref=SecretRef("pg", "dsn"),
        worker=WorkerTemplate(image="img:2", image_pull_policy="Always", image_pull_secrets=({"name": "regcred"},),
                              tasks=("app.tasks",), env=({"name": "A", "value": "1"},),
                              env_from=({"configMapRef": {"name": "cfg"}},), resources={"limits": {"cpu": "1"}},
                              volumes=({"name": "data", "emptyDir": {}},),
                              volume_mounts=({"name": "data", "mountPath": "/d"},),
                              node_selector={"disk": "ssd"}, tolerations=({"key": "k", "operator": "Exists"},),
                              affinity=affinity, topology_spread_constraints=(spread,), priority_class_name="low",
                              service_account_name="sa", pod_annotations={"a": "b"}, pod_labels={"team": "mail"},
                              drain_timeout_seconds=300),
        concurrency=7, rate_limit=RateLimit(20, 1), concurrency_limit=30,
        retry=Retry(3, 0.5, 60.0), job_timeout_seconds=120.0, retention=Retention(3600, 60), paused=True,
        deletion_policy="Delete",
        autoscaling=Autoscaling(min_replicas=0, max_replicas=4, target_per_replica=8, scale_down_delay_seconds=2.0,
                                scale_to_zero=True, poll_interval_seconds=0.5))


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.autoscaling.minReplicas",
     "must be <= spec.autoscaling.maxReplicas (2); lower it or raise spec.autoscaling.maxReplicas"),
    ({"rateLimit": "100/sec"}, "spec.rateLimit", "write N/s, N/m or N/h"),
    ({"autoscaling": {"maxReplicas": 0}}, "spec.autoscaling.maxReplicas", "integer >= 1 and <= 1000, got 0"),
    ({"autoscaling": {"pollIntervalSeconds": "soon"}}, "spec.autoscaling.pollIntervalSeconds",
     "must be a number > 0 and <= 3600"),
    ({"autoscaling": {"scaleToZero": "yes"}}, "spec.autoscaling.scaleToZero", "must be true or false"),
    ({"concurrency": 0}, "spec.concurrency", "integer >= 1 and <= 10000"),
    ({"rateLimit": "fast"}, "spec.rateLimit", "write N/s, N/m or N/h"),
    ({"worker": None}, "spec.worker", "required; set the worker image"),
    ({"worker": {"tasks": ["a"]}}, "spec.worker.image", "required; set the worker image"),
    ({"worker": {"image": "i", "env": [{"value": "1"}]}}, "spec.worker.env[0].name", "required"),
    ({"databaseSecretRef": {}}, "spec.databaseSecretRef.name", "name the Secret that holds the PostgreSQL URL"),
    ({"retry": {"backoffBaseSeconds": 10, "backoffMaxSeconds": 5}}, "spec.retry.backoffBaseSeconds",
     "must not exceed spec.retry.backoffMaxSeconds (5)"),
    ({"autoscaling": []}, "spec.autoscaling", "must be an object"),
    ({"autoscaling": {"drainWithinSeconds": 0}}, "spec.autoscaling.drainWithinSeconds",
     "integer >= 1 and <= 86400, got 0"),
    ({"autoscaling": {"drainWithinSeconds": "2m"}}, "spec.autoscaling.drainWithinSeconds", "must be an integer"),
    # The pod template: what only the operator knows (its own volume, mount and labels).
    ({"worker": {"image": "i", "volumes": [{"name": "tmp", "emptyDir": {}}]}}, "spec.worker.volumes[0].name",
     "the volume name 'tmp' is the operator's"),
    ({"worker": {"image": "i", "volumes": [{"name": "a"}, {"name": "a"}]}}, "spec.worker.volumes[1].name",
     "duplicate volume name 'a'"),
    ({"worker": {"image": "i", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}},
     "spec.worker.volumeMounts[0].name", "no volume 'data' in spec.worker.volumes"),
    ({"worker": {"image": "i", "volumes": [{"name": "a"}], "volumeMounts": [{"name": "a", "mountPath": "/tmp/"}]}},
     "spec.worker.volumeMounts[0].mountPath", "/tmp is the operator's"),
    ({"worker": {"image": "i", "podLabels": {"shoal.dev/queue": "x"}}}, "spec.worker.podLabels",
     "the label 'shoal.dev/queue' is the operator's"),
    ({"worker": {"image": "i", "podLabels": {"bad key": "x"}}}, "spec.worker.podLabels.bad key",
     "not a valid label key"),
    ({"worker": {"image": "i", "podLabels": {"Example.com/a": "x"}}}, "spec.worker.podLabels.Example.com/a",
     "not a valid label key"),
    ({"worker": {"image": "i", "podLabels": {"a": "-x"}}}, "spec.worker.podLabels.a", "not a valid label value"),
    ({"worker": {"image": "i", "drainTimeoutSeconds": -5}}, "spec.worker.drainTimeoutSeconds",
     "integer >= 0 and <= 86400"),
    ({"worker": {"image": "i", "affinity": []}}, "spec.worker.affinity", "must be an object"),
    ({"worker": {"image": "i", "volumes": {"name": "a"}}}, "spec.worker.volumes", "must be a list of objects"),
])
def test_errors_name_the_field_and_the_fix(change: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_queue_spec("ns", "q", {**MINIMAL, **change})
    assert err.value.field == field and says in str(err.value), str(err.value)
    assert str(err.value).startswith(f"{field}: ")


async def test_an_invalid_spec_is_reported_on_the_queue() -> None:
    """As before the parser existed: SpecValid=False with the message, and a Warning Event."""
    from shoal.operator.databases import Databases

    result = await reconcile_queue(name="q", namespace="ns", uid="u", status={}, generation=3, now="T",
                                   databases=Databases(),
                                   spec={**MINIMAL, "autoscaling": {"minReplicas": 4, "maxReplicas": 3}})
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["SpecValid"]["status"] == "False" and conditions["Ready"]["status"] == "False"
    assert conditions["SpecValid"]["message"].startswith("spec.autoscaling.minReplicas: must be <= ")
    assert ("Warning", "InvalidSpec") in [(kind, reason) for kind, reason, _ in result.events]
    assert result.retry is None  # a spec problem waits for an edit, not a retry


def test_the_crd_and_the_parser_reserve_the_same_pod_labels() -> None:
    """The CRD's CEL rule on spec.worker.podLabels names exactly the operator's own labels."""
    import re

    from shoal.operator.naming import worker_labels
    from shoal.operator.queue_spec import RESERVED_LABELS

    (rule,) = SCHEMA["properties"]["worker"]["properties"]["podLabels"]["x-kubernetes-validations"]
    assert sorted(re.findall(r"'([^']+)'", rule["rule"])) == sorted(RESERVED_LABELS) == sorted(worker_labels("q"))


def test_the_drain_objective_reaches_the_policy() -> None:
    assert parse_queue_spec("ns", "q", MINIMAL).autoscaling.drain_within_seconds is None
    assert scaling_policy(parse_queue_spec("ns", "q", MINIMAL)).drain_within is None
    spec = parse_queue_spec("ns", "q", {**MINIMAL, "autoscaling": {"drainWithinSeconds": 120}})
    assert spec.autoscaling.drain_within_seconds == 120
    assert scaling_policy(spec).drain_within == 120.0
