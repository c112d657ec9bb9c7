"""A Queue resource's spec → the queue's configuration in Postgres (a pure mapping).

The CRD's defaults are applied here too: the emulator (and an old API server) may hand us
a spec without them, and the result must be the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal.names import queue_name
from shoal.queues import QueueConfig
from shoal.ratelimit import parse_rate_limit


def postgres_queue_name(namespace: str, name: str, spec: Mapping[str, Any]) -> str:
    """``spec.queueName``, else ``<namespace>.<name>``: two namespaces sharing one database
    never collide by default. Raises ValidationError naming the field when invalid."""
    explicit = spec.get("queueName")
    if explicit is not None:
        return queue_name(explicit, "spec.queueName")
    default = f"{namespace}.{name}"
    try:
        return queue_name(default, "spec.queueName")
    except ValueError:
        from shoal.errors import ValidationError

        raise ValidationError(
            "spec.queueName",
            f"the default queue name {default!r} is not a valid Postgres queue name (too long, or "
            "characters outside [a-z0-9._-]); set spec.queueName explicitly",
        ) from None


def queue_config(namespace: str, name: str, spec: Mapping[str, Any]) -> QueueConfig:
    """Everything Postgres needs to know about the queue (flow control, retries, retention)."""
    rate = spec.get("rateLimit")
    retry = spec.get("retry") or {}
    retention = spec.get("retention") or {}
    failed = retention.get("failedSeconds")
    limit = spec.get("concurrencyLimit")
    config = QueueConfig(
        name=postgres_queue_name(namespace, name, spec),
        paused=bool(spec.get("paused", False)),
        concurrency_limit=int(limit) if limit is not None else None,
        rate_limit=parse_rate_limit(rate, "spec.rateLimit") if rate else None,
        max_attempts=int(retry.get("maxAttempts", 5)),
        keep_succeeded_seconds=int(retention.get("succeededSeconds", 0)),
        keep_failed_seconds=int(failed) if failed is not None else None,
    )
    return config.validate()
