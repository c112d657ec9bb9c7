"""The operator's per-queue health gauges and build info (shoal.operator.metrics): what the
autoscaler measured on a real PostgreSQL reaches shoal_queue_oldest_ready_age_seconds and
shoal_queue_live_workers through the Queue's reporter (shoal.operator.scale_status)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest

from shoal import build_info, client, queues
from shoal.operator import kube, metrics
from shoal.operator.scale_status import QueueStatus
from shoal.scaler.decision import Decision, Policy
from shoal.scaler.loop import Plan, TickReport
from shoal.scaler.measure import LIVE_WORKER_SECONDS, create_measure_pool, measure

POLICY = Policy(min_replicas=0, max_replicas=4, concurrency=10, scale_down_delay=5.0)


def sample(name: str, labels: dict[str, str]) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_build_info_is_exported() -> None:
    version = build_info.shoal_version()
    assert version and version != "unknown"
    assert sample("shoal_build_info", {"version": version}) == 1.0


async def test_reporter_exports_oldest_ready_age_and_live_workers(
        conn: asyncpg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    patches: list[dict[str, Any]] = []

    async def patch_queue_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
        patches.append(patch)

    monkeypatch.setattr(kube, "patch_queue_status", patch_queue_status)
    queue = "gauges"
    await queues.declare_queue(conn, queue)
    now: dt.datetime = await conn.fetchval("SELECT now()")
    await client.enqueue(conn, queue, "t", run_at=now - dt.timedelta(seconds=120))
    await client.enqueue(conn, queue, "t", priority=7, run_at=now + dt.timedelta(hours=1))  # scheduled
    await conn.execute("SELECT shoal.heartbeat('w-fresh', $1, 'h', 1)", queue)
    await conn.execute("INSERT INTO shoal.workers (id, queue, heartbeat_at) VALUES ('w-stale', $1, $2)",
                       queue, now - dt.timedelta(seconds=LIVE_WORKER_SECONDS + 60))
    pool = await create_measure_pool(db_url, max_size=2)
    try:
        reporter = QueueStatus(namespace="ns", name=queue, status={}, emit=lambda *_: None)
        m = await measure(pool, queue, POLICY)
        decision = Decision(desired=1, reason="test", direction="up", recommendation=1)
        await reporter.report(TickReport(plan=Plan(queue, pool, POLICY), decision=decision, measurement=m,
                                         before=0, scaled=False, autoscaling=True, seconds=0.01))
    finally:
        await pool.close()
    age = sample("shoal_queue_oldest_ready_age_seconds", {"queue": queue})
    assert age is not None and 120 <= age < 180
    assert sample("shoal_queue_live_workers", {"queue": queue}) == 1.0
    assert patches, "the reporter still patches the Queue's status"

    metrics.forget_queue(queue)  # a deleted Queue's series go
    assert sample("shoal_queue_oldest_ready_age_seconds", {"queue": queue}) is None
    assert sample("shoal_queue_live_workers", {"queue": queue}) is None
