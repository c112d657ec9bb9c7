"""Names and labels of what the operator creates for a Queue, in one place.

Selectors are immutable on a Deployment, so the selector labels must never change once
released; the other labels may grow.
"""

from __future__ import annotations

from shoal.errors import ValidationError

LABEL_QUEUE = "shoal.dev/queue"
FIELD_MANAGER = "shoal-operator"
TEMPLATE_HASH_ANNOTATION = "shoal.dev/template-hash"
# On the Deployment: which pod-template labels and annotations came from the Queue (JSON).
POD_METADATA_ANNOTATION = "shoal.dev/pod-metadata"
MAX_LABEL_VALUE = 63


def deployment_name(queue_resource: str) -> str:
    """The worker Deployment of a Queue resource."""
    return f"{queue_resource}-workers"


def selector_labels(queue_resource: str) -> dict[str, str]:
    """Labels that select a Queue's worker pods (immutable once a Deployment exists)."""
    if len(queue_resource) > MAX_LABEL_VALUE:
        raise ValidationError(
            "metadata.name",
            f"Queue name {queue_resource!r} is longer than {MAX_LABEL_VALUE} characters and cannot be "
            "used as a label value; re-create the Queue with a shorter name",
        )
    return {
        "app.kubernetes.io/name": "shoal",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/instance": queue_resource,
        LABEL_QUEUE: queue_resource,
    }


def worker_labels(queue_resource: str) -> dict[str, str]:
    """All labels of the Deployment and its pods."""
    return {**selector_labels(queue_resource), "app.kubernetes.io/managed-by": FIELD_MANAGER}
