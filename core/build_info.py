"""`shoal_build_info{version}`: one gauge definition for every registry that exports it (the
worker's and the operator's), so the two cannot drift apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from shoal.version import shoal_version


def export_build_info(registry: CollectorRegistry) -> Gauge:
    """Register the gauge on `registry`, set to 1 for this version."""
    gauge = Gauge("shoal_build_info", "Always 1; the version label is Shoal's version", ("version",),
                  registry=registry)
    gauge.labels(shoal_version()).set(1)
    return gauge
