"""The operator's Prometheus metrics, in a registry of its own.

A registry of its own (not prometheus_client's global one) so a scrape shows exactly what
Shoal exports and the dashboard test can check every panel against it. The autoscaler owns
``SCALE_EVENTS`` and ``SCALE_DECISION_SECONDS``; they are declared here so the operator's
``/metrics`` endpoint has one registry to serve.
"""

from __future__ import annotations

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from shoal.build_info import export_build_info

REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(PROCESS_COLLECTOR)
REGISTRY.register(PLATFORM_COLLECTOR)

# Named "pending" for users (like the Queue's status field) but it holds the *ready* jobs: runnable
# now, not those scheduled for later.
QUEUE_READY = Gauge("shoal_queue_pending", "Jobs ready to run now, not those scheduled for later (capped count)",
                    ["queue"], registry=REGISTRY)
QUEUE_RUNNING = Gauge("shoal_queue_running", "Jobs running right now (capped count)", ["queue"], registry=REGISTRY)
DESIRED_REPLICAS = Gauge("shoal_queue_desired_replicas", "Worker replicas the operator wants", ["queue"],
                         registry=REGISTRY)
CURRENT_REPLICAS = Gauge("shoal_queue_current_replicas", "Worker replicas the Deployment requests",
                         ["queue"], registry=REGISTRY)
OLDEST_READY_AGE = Gauge("shoal_queue_oldest_ready_age_seconds",
                         "Age of the oldest ready job (since its run_at); 0 when none is ready", ["queue"],
                         registry=REGISTRY)
LIVE_WORKERS = Gauge("shoal_queue_live_workers", "Workers of the queue with a heartbeat within the workers' default --stale-after (30 s)",
                     ["queue"], registry=REGISTRY)
PAUSED = Gauge("shoal_queue_paused", "1 while the queue is paused (workers claim nothing), else 0", ["queue"],
               registry=REGISTRY)
TICK_FAILURES = Counter("shoal_autoscaler_tick_failures", "Autoscaler ticks that failed, by cause (not_ready: "
                        "waiting for the Queue's spec or database; unknown_queue; database; timeout; other)",
                        ["queue", "reason"], registry=REGISTRY)
SCALE_EVENTS = Counter("shoal_scale_events", "Replica changes made to worker Deployments",
                       ["queue", "direction"], registry=REGISTRY)
SCALE_DECISION_SECONDS = Histogram(
    "shoal_scale_decision_seconds", "Time to measure a queue and decide its replicas", ["queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
BUILD_INFO = export_build_info(REGISTRY)


def forget_queue(queue: str) -> None:
    """Drop a deleted queue's series so dashboards do not show it forever."""
    for gauge in (QUEUE_READY, QUEUE_RUNNING, OLDEST_READY_AGE, LIVE_WORKERS, DESIRED_REPLICAS, CURRENT_REPLICAS,
                  PAUSED):
        try:
            gauge.remove(queue)
        except KeyError:
            pass
    for labels in [s.labels for m in TICK_FAILURES.collect() for s in m.samples if s.labels.get("queue") == queue]:
        try:
            TICK_FAILURES.remove(queue, labels["reason"])
        except KeyError:
            pass
