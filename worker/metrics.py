"""The worker's Prometheus metrics, in a registry of its own (no process collectors from
other libraries leak in, and tests can read exactly what a scrape would show)."""

from __future__ import annotations

from prometheus_client import (
                         PLATFORM_COLLECTOR,
                         PROCESS_COLLECTOR,
                         CollectorRegistry,
                         Counter,
                         Gauge,
                         Histogram,
)

REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(PROCESS_COLLECTOR)
REGISTRY.register(PLATFORM_COLLECTOR)

_LABELS = ("queue", "task")
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS_CLAIMED = Counter("shoal_jobs_claimed", "Jobs claimed by this worker", _LABELS, registry=REGISTRY)
JOBS_SUCCEEDED = Counter("shoal_jobs_succeeded", "Jobs that succeeded", _LABELS, registry=REGISTRY)
JOBS_FAILED = Counter("shoal_jobs_failed", "Jobs that failed for good (no retry left)", _LABELS, registry=REGISTRY)
JOBS_RETRIED = Counter("shoal_jobs_retried", "Failed attempts scheduled for a retry", _LABELS, registry=REGISTRY)
JOBS_CANCELLED = Counter("shoal_jobs_cancelled", "Running jobs cancelled on request", _LABELS, registry=REGISTRY)
JOB_DURATION = Histogram("shoal_job_duration_seconds", "Handler run time", _LABELS, buckets=_DURATION_BUCKETS,
                         registry=REGISTRY)
QUEUE_WAIT = Histogram("shoal_job_queue_wait_seconds", "From scheduled run time to claim", _LABELS,
                       buckets=_DURATION_BUCKETS, registry=REGISTRY)
IN_FLIGHT = Gauge("shoal_jobs_in_flight", "Jobs claimed and not yet finished by this worker", ("queue",),
                  registry=REGISTRY)
RATE_LIMITED = Counter("shoal_rate_limited_claims", "Claims that found the queue at its rate or concurrency limit",
                       ("queue", "reason"), registry=REGISTRY)
