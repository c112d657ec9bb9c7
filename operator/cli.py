"""`shoal operator`: run the kopf operator in this process.

Registered through the ``shoal.commands`` entry point, so the core CLI never imports kopf.
Kopf's liveness endpoint serves ``/healthz`` on ``--health-port`` (the chart's probes);
Prometheus metrics from `shoal.operator.metrics.REGISTRY` are served on ``--metrics-port``.
Either port 0 disables that endpoint.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from shoal.errors import ConfigError
from shoal.extras import require_extra

log = logging.getLogger("shoal.operator")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``operator`` subcommand to the shoal CLI."""
    p = subparsers.add_parser("operator", help="run the Kubernetes operator (Queue and CronJob resources)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--peering", metavar="NAME",
                      help="coordinate replicas through this (Cluster)KopfPeering object: one is active")
    mode.add_argument("--standalone", action="store_true",
                      help="no peering: this process acts alone (development, tests, a single replica)")
    p.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="serve only this namespace (repeatable; default: all namespaces)")
    p.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics (0: off)")
    p.add_argument("--resync-interval", type=_positive, default=10.0,
                   help="seconds between Queue resyncs (drift correction, counts, status)")
    p.add_argument("--cron-interval", type=_positive, default=1.0,
                   help="seconds between checks for due CronJob ticks")
    p.set_defaults(handler=run_operator)


async def run_operator(args: argparse.Namespace) -> int:
    require_extra("operator", "shoal operator")
    import kopf
    from prometheus_client import start_http_server

    from shoal.operator import kube
    from shoal.operator.config import OperatorConfig
    from shoal.operator.databases import Databases
    from shoal.operator.handlers import register as register_handlers
    from shoal.operator.metrics import REGISTRY
    from shoal.operator.priority import peering_priority

    try:
        kube.load_config()
    except Exception as exc:
        raise ConfigError(f"no Kubernetes credentials: run in a pod or set KUBECONFIG ({exc})") from None
    config = OperatorConfig(resync_seconds=args.resync_interval, cron_interval=args.cron_interval,
                            cron_resync_seconds=max(30.0, args.resync_interval))
    databases = Databases()
    registry = kopf.OperatorRegistry()
    register_handlers(registry, config, databases)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=REGISTRY)
    standalone = args.standalone or not args.peering
    priority = peering_priority()
    log.info("operator starting: %s, %s", "standalone" if standalone else f"peering {args.peering!r} "
             f"with priority {priority}", f"namespaces {args.namespace}" if args.namespace else "all namespaces")
    await kopf.operator(
        registry=registry,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=standalone,
        peering_name=None if standalone else args.peering,
        priority=priority,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0
