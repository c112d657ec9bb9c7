"""A Queue's typed spec → the queue's row in Postgres (a pure mapping).

The row is what the workers obey (pause, rate limit, concurrency cap, retries, retention),
and the Queue's autoscaler reads pause and limits from the same row, so the reconciler
writing it is the one way the spec reaches both.
"""

from __future__ import annotations

from shoal.operator.queue_spec import QueueSpec
from shoal.queues import QueueConfig


def queue_config(spec: QueueSpec) -> QueueConfig:
    """Everything Postgres needs to know about the queue (flow control, retries, retention)."""
    config = QueueConfig(
        name=spec.queue_name,
        paused=spec.paused,
        concurrency_limit=spec.concurrency_limit,
        rate_limit=spec.rate_limit,
        max_attempts=spec.retry.max_attempts,
        keep_succeeded_seconds=spec.retention.succeeded_seconds,
        keep_failed_seconds=spec.retention.failed_seconds,
    )
    return config.validate()
