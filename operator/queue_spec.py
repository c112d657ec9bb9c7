"""A Queue resource's spec as one typed value: parsed once, used by every part of the operator.

The reconciler (Postgres config, Deployment), the Deployment builder, the Queue's
autoscaler and a CronJob resolving its Queue all read `QueueSpec`, never the raw dict, so a
field is interpreted in exactly one place. The CRD (crds/queue.yaml) is the source of
truth for the schema and its defaults; the defaults are repeated here once, as the
dataclasses' field defaults, because the emulator (and an old API server) may hand us a
spec without them and the result must be the same either way. tests/operator/test_queue_spec.py
checks that every ``default:`` in the CRD equals the value here.

`parse_queue_spec` raises `ValidationError` whose field is the spec path
(``spec.autoscaling.maxReplicas``) and whose message says the fix; the reconciler shows it
on the SpecValid condition and as an Event. The scaling decision speaks its own names;
`scaling_policy` translates its errors into these paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal.errors import ValidationError
from shoal.names import queue_name
from shoal.operator.naming import worker_labels
from shoal.operator.spec_fields import (
    boolean,
    choice,
    integer,
    json_object,
    label_map,
    number,
    object_list,
    string,
    string_list,
    string_map,
)
from shoal.ratelimit import RateLimit, parse_rate_limit
from shoal.scaler.decision import Policy, translate_error

JSON = dict[str, Any]
Convert = Callable[[Any, str], Any]


@dataclass(frozen=True)
class SecretRef:
    """``spec.databaseSecretRef``: the Secret (in the Queue's namespace) holding the URL."""

    name: str
    key: str = "url"


@dataclass(frozen=True)
class WorkerTemplate:
    """``spec.worker``: the worker pods. Treat the dicts as read-only (the builder copies them).

    The Kubernetes-typed values (env, resources, affinity, volumes, ...) are kept as given, in
    API spelling: the CRD's schemas (Kubernetes' own, see scripts/sync_chart_crds.py) check
    their shape, and the Deployment's API checks them again."""

    image: str
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[JSON, ...] = ()
    tasks: tuple[str, ...] = ()
    env: tuple[JSON, ...] = ()
    env_from: tuple[JSON, ...] = ()
    resources: JSON = field(default_factory=dict)
    volumes: tuple[JSON, ...] = ()
    volume_mounts: tuple[JSON, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[JSON, ...] = ()
    affinity: JSON = field(default_factory=dict)
    topology_spread_constraints: tuple[JSON, ...] = ()
    priority_class_name: str | None = None
    service_account_name: str | None = None
    pod_annotations: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)
    drain_timeout_seconds: int = 30


@dataclass(frozen=True)
class Retry:
    """``spec.retry``."""

    max_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0


@dataclass(frozen=True)
class Retention:
    """``spec.retention``; `failed_seconds` None keeps failed jobs forever."""

    succeeded_seconds: int = 0
    failed_seconds: int | None = None


@dataclass(frozen=True)
class Autoscaling:
    """``spec.autoscaling``; `target_per_replica` None means ``spec.concurrency``;
    `drain_within_seconds` None means no drain-time objective."""

    min_replicas: int = 1
    max_replicas: int = 10
    target_per_replica: int | None = None
    scale_down_delay_seconds: float = 60.0
    scale_to_zero: bool = False
    poll_interval_seconds: float = 1.0
    drain_within_seconds: int | None = None


@dataclass(frozen=True)
class QueueSpec:
    """A Queue's spec with the CRD's defaults applied. `queue_name` is resolved: ``spec.queueName``,
    else ``<namespace>.<name>``."""

    queue_name: str
    database_secret_ref: SecretRef
    worker: WorkerTemplate
    concurrency: int = 10
    rate_limit: RateLimit | None = None
    concurrency_limit: int | None = None
    retry: Retry = Retry()
    job_timeout_seconds: float | None = None
    retention: Retention = Retention()
    paused: bool = False
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    autoscaling: Autoscaling = Autoscaling()


RATE_LIMIT = re.compile(r"[1-9][0-9]*/[smh]")  # the CRD's pattern (the CLI accepts more spellings)


def _rate_limit(value: Any, path: str) -> RateLimit:
    if not isinstance(value, str) or not RATE_LIMIT.fullmatch(value):
        raise ValidationError(path, f"invalid rate limit {value!r}: write N/s, N/m or N/h, e.g. '100/s' or '10/m'")
    return parse_rate_limit(value, path)


def _read(raw: Any, path: str, fields: Mapping[str, tuple[str, Convert]]) -> dict[str, Any]:
    """The keys of `raw` that are set, converted, under their Python names. Absent (or null)
    keys are left out, so the dataclass's default applies: defaults live in one place."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError(path, f"must be an object, got {raw!r}")
    out: dict[str, Any] = {}
    for key, (name, convert) in fields.items():
        if raw.get(key) is not None:
            out[name] = convert(raw[key], f"{path}.{key}")
    return out


def _required(raw: Any, path: str, keys: tuple[str, ...], fix: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValidationError(path, f"required; {fix}" if raw is None else f"must be an object, got {raw!r}")
    for key in keys:
        if raw.get(key) is None:
            raise ValidationError(f"{path}.{key}", f"required; {fix}")
    return raw


SECRET_REF = {"name": ("name", string(min_length=1)), "key": ("key", string(min_length=1))}
WORKER = {
    "image": ("image", string(min_length=1)),
    "imagePullPolicy": ("image_pull_policy", choice("Always", "IfNotPresent", "Never")),
    "imagePullSecrets": ("image_pull_secrets", object_list(required="name")),
    "tasks": ("tasks", string_list),
    "env": ("env", object_list(required="name")),
    "envFrom": ("env_from", object_list()),
    "resources": ("resources", json_object),
    "volumes": ("volumes", object_list(required="name")),
    "volumeMounts": ("volume_mounts", object_list(required="name")),
    "nodeSelector": ("node_selector", string_map),
    "tolerations": ("tolerations", object_list()),
    "affinity": ("affinity", json_object),
    "topologySpreadConstraints": ("topology_spread_constraints", object_list()),
    "priorityClassName": ("priority_class_name", string(min_length=1)),
    "serviceAccountName": ("service_account_name", string(min_length=1)),
    "podAnnotations": ("pod_annotations", string_map),
    "podLabels": ("pod_labels", label_map),
    "drainTimeoutSeconds": ("drain_timeout_seconds", integer(minimum=0, maximum=86400)),
}
# The operator's own parts of the pod, which spec.worker may not redefine.
TMP_VOLUME, TMP_PATH = "tmp", "/tmp"
RESERVED_LABELS = tuple(worker_labels("queue"))
RETRY = {
    "maxAttempts": ("max_attempts", integer(minimum=1)),
    "backoffBaseSeconds": ("backoff_base_seconds", number(above=0)),
    "backoffMaxSeconds": ("backoff_max_seconds", number(above=0)),
}
RETENTION = {
    "succeededSeconds": ("succeeded_seconds", integer(minimum=0)),
    "failedSeconds": ("failed_seconds", integer(minimum=0)),
}
AUTOSCALING = {
    "minReplicas": ("min_replicas", integer(minimum=0)),
    "maxReplicas": ("max_replicas", integer(minimum=1, maximum=1000)),
    "targetPerReplica": ("target_per_replica", integer(minimum=1)),
    "scaleDownDelaySeconds": ("scale_down_delay_seconds", number(minimum=0)),
    "scaleToZero": ("scale_to_zero", boolean),
    "pollIntervalSeconds": ("poll_interval_seconds", number(above=0, maximum=3600)),
    "drainWithinSeconds": ("drain_within_seconds", integer(minimum=1, maximum=86400)),
}
TOP = {
    "concurrency": ("concurrency", integer(minimum=1, maximum=10000)),
    "rateLimit": ("rate_limit", _rate_limit),
    "concurrencyLimit": ("concurrency_limit", integer(minimum=1)),
    "jobTimeoutSeconds": ("job_timeout_seconds", number(above=0)),
    "paused": ("paused", boolean),
    "deletionPolicy": ("deletion_policy", choice("Retain", "Delete")),
}


def resolve_queue_name(namespace: str, name: str, spec: Mapping[str, Any]) -> str:
    """``spec.queueName``, else ``<namespace>.<name>``: two namespaces sharing one database
    never collide by default. Raises ValidationError naming the field when invalid."""
    explicit = spec.get("queueName")
    if explicit is not None:
        return queue_name(explicit, "spec.queueName")
    default = f"{namespace}.{name}"
    try:
        return queue_name(default, "spec.queueName")
    except ValidationError:
        raise ValidationError(
            "spec.queueName",
            f"the default queue name {default!r} is not a valid Postgres queue name (too long, or "
            "characters outside [a-z0-9._-]); set spec.queueName explicitly",
        ) from None


def _check_worker(worker: WorkerTemplate) -> WorkerTemplate:
    """What the CRD's schema cannot say about spec.worker: the operator's own volume, mount
    path and labels, and mounts of volumes that do not exist (the Deployment would be refused)."""
    path = "spec.worker"
    declared: set[str] = set()
    for i, volume in enumerate(worker.volumes):
        if volume["name"] == TMP_VOLUME:
            raise ValidationError(f"{path}.volumes[{i}].name", f"the volume name {TMP_VOLUME!r} is the operator's "
                                  f"(the writable {TMP_PATH}); choose another name")
        if volume["name"] in declared:
            raise ValidationError(f"{path}.volumes[{i}].name", f"duplicate volume name {volume['name']!r}")
        declared.add(volume["name"])
    for i, mount in enumerate(worker.volume_mounts):
        if mount["name"] not in declared:
            raise ValidationError(f"{path}.volumeMounts[{i}].name",
                                  f"no volume {mount['name']!r} in spec.worker.volumes; declare it there")
        if str(mount.get("mountPath", "")).rstrip("/") == TMP_PATH:
            raise ValidationError(f"{path}.volumeMounts[{i}].mountPath",
                                  f"{TMP_PATH} is the operator's writable emptyDir; mount elsewhere")
    reserved = sorted(set(worker.pod_labels) & set(RESERVED_LABELS))
    if reserved:
        raise ValidationError(f"{path}.podLabels", f"the label {reserved[0]!r} is the operator's (it selects the "
                              f"worker pods); these cannot be set: {', '.join(RESERVED_LABELS)}")
    return worker


def parse_queue_spec(namespace: str, name: str, spec: Mapping[str, Any]) -> QueueSpec:
    """The typed spec, CRD defaults applied. Raises ValidationError naming the field and the fix."""
    ref = _required(spec.get("databaseSecretRef"), "spec.databaseSecretRef", ("name",),
                    "name the Secret that holds the PostgreSQL URL")
    worker = _required(spec.get("worker"), "spec.worker", ("image",), "set the worker image")
    parsed = QueueSpec(
        queue_name=resolve_queue_name(namespace, name, spec),
        database_secret_ref=SecretRef(**_read(ref, "spec.databaseSecretRef", SECRET_REF)),
        worker=_check_worker(WorkerTemplate(**_read(worker, "spec.worker", WORKER))),
        retry=Retry(**_read(spec.get("retry"), "spec.retry", RETRY)),
        retention=Retention(**_read(spec.get("retention"), "spec.retention", RETENTION)),
        autoscaling=Autoscaling(**_read(spec.get("autoscaling"), "spec.autoscaling", AUTOSCALING)),
        **_read(spec, "spec", TOP),
    )
    if parsed.retry.backoff_base_seconds > parsed.retry.backoff_max_seconds:
        raise ValidationError("spec.retry.backoffBaseSeconds", "must not exceed spec.retry.backoffMaxSeconds "
                              f"({parsed.retry.backoff_max_seconds:g}); lower it or raise backoffMaxSeconds")
    scaling_policy(parsed)  # the decision's own checks (e.g. maxReplicas >= minReplicas), in spec names
    return parsed


# The decision's names → the spec's paths, so its errors point at what the user wrote.
POLICY_FIELDS = {
    "min_replicas": "spec.autoscaling.minReplicas",
    "max_replicas": "spec.autoscaling.maxReplicas",
    "target_per_replica": "spec.autoscaling.targetPerReplica",
    "scale_down_delay": "spec.autoscaling.scaleDownDelaySeconds",
    "scale_to_zero": "spec.autoscaling.scaleToZero",
    "concurrency": "spec.concurrency",
    "rate_limit": "spec.rateLimit",
    "concurrency_limit": "spec.concurrencyLimit",
    "drain_within": "spec.autoscaling.drainWithinSeconds",
}


def scaling_policy(spec: QueueSpec) -> Policy:
    """The decision's policy for this Queue (its limits too, though the loop uses the queue
    row's, which the reconciler writes from this same spec). Raises ValidationError in spec names."""
    auto = spec.autoscaling
    try:
        return Policy(
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            concurrency=spec.concurrency,
            scale_down_delay=auto.scale_down_delay_seconds,
            target_per_replica=auto.target_per_replica,
            scale_to_zero=auto.scale_to_zero,
            rate_limit=spec.rate_limit.per_second if spec.rate_limit else None,
            concurrency_limit=spec.concurrency_limit,
            drain_within=auto.drain_within_seconds,
        )
    except ValidationError as exc:
        raise translate_error(exc, POLICY_FIELDS) from None
