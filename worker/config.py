"""A worker's settings (the `shoal worker` flags). Its own module so that every role can read
them without importing the supervisor (runner.py, which re-exports `WorkerConfig`)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from shoal.config import STALE_AFTER
from shoal.errors import ConfigError
from shoal.tasks import TaskRegistry
from shoal.tasks import registry as default_registry


def default_worker_id() -> str:
    """`<pod>-<pid>-<random>`: the operator reads the pod out of it (pod-deletion-cost). In a pod
    the operator sets POD_NAME (downward API): the hostname is the pod name cut to 63 characters."""
    name = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    database_url: str
    queue: str
    concurrency: int = 10
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    stale_after: float = STALE_AFTER  # a worker silent this long is dead and its jobs are rescued
    drain_timeout: float = 30.0
    job_timeout: float | None = None
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    prune_interval: float = 10.0
    held_claims: bool = True  # short jobs on unlimited queues: one write per job (sql/004_held_claims.sql)
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    worker_id: str = field(default_factory=default_worker_id)
    registry: TaskRegistry = field(default_factory=lambda: default_registry)

    def validate(self) -> WorkerConfig:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be >= 1")
        if self.stale_after <= self.heartbeat_interval * 2:
            raise ConfigError("--stale-after must exceed twice --heartbeat-interval, or live workers look dead")
        return self
