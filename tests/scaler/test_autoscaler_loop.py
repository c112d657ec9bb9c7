"""The one autoscaler loop (shoal.scaler.loop.Autoscaler), tick by tick, with a recording target.

What both backends rely on: flow control comes from the queue's row (pause, limits), a fixed
policy is applied or left alone depending on the backend, and failures back off with
`shoal.backoff.loop_delay` without ever ending the loop. Ticks are driven with `step()`, so
nothing here depends on timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shoal import client, queues
from shoal.backoff import loop_delay
from shoal.client import NewJob
from shoal.errors import UnknownQueueError
from shoal.scaler.decision import Decision, Policy
from shoal.scaler.loop import MAX_BACKOFF, Autoscaler, NotReady, Plan, create_measure_pool


class Recorder:
    """A target that only remembers: what a Deployment's scale subresource would hold."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.writes: list[int] = []

    async def current_replicas(self) -> int:
        return self.replicas

    async def set_replicas(self, desired: int, decision: Decision) -> None:
        self.writes.append(desired)
        self.replicas = desired


def knobs(min_replicas: int, max_replicas: int, concurrency: int = 5) -> Policy:
    return Policy(min_replicas=min_replicas, max_replicas=max_replicas, concurrency=concurrency,
                  scale_down_delay=0.0)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_measure_pool(db_url)
    try:
        yield p
    finally:
        await p.close()


async def backlog(conn: asyncpg.Connection, queue: str, n: int, **config: object) -> None:
    await queues.declare_queue(conn, queue, **config)
    await client.enqueue_many(conn, [NewJob(queue, "t", {"i": i}) for i in range(n)])


async def test_limits_come_from_the_queue_row(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    """50 ready at 5 per replica want 10, but the row's concurrency cap of 12 fills 3."""
    await backlog(conn, "capped", 50, concurrency_limit=12)
    target = Recorder(1)
    scaler = Autoscaler(target=target, queue="capped", pool=pool, policy=lambda: knobs(1, 10))
    assert await scaler.step() == scaler.interval
    assert target.writes == [3] and "concurrency limit 12" in (scaler.last.reason if scaler.last else "")
    await queues.declare_queue(conn, "capped", concurrency_limit=None)  # lifted: read again next tick
    await scaler.step()
    assert target.writes == [3, 10]


async def test_pause_comes_from_the_queue_row(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await backlog(conn, "paused", 50, paused=True)
    target = Recorder(1)
    scaler = Autoscaler(target=target, queue="paused", pool=pool, policy=lambda: knobs(1, 10))
    for _ in range(3):
        await scaler.step()
    assert target.writes == [] and scaler.last is not None and "queue paused: 50 ready" in scaler.last.reason
    await queues.set_paused(conn, "paused", False)
    await scaler.step()
    assert target.writes == [10]


@pytest.mark.parametrize(("hands_off", "writes"), [(True, []), (False, [2])])
async def test_a_fixed_policy_is_applied_or_left_to_its_owner(conn: asyncpg.Connection, pool: asyncpg.Pool,
                                                               hands_off: bool, writes: list[int]) -> None:
    """min == max: the operator leaves replicas to KEDA/HPA/kubectl; `shoal up` applies the count."""
    await backlog(conn, "fixed", 60)
    target = Recorder(5)  # e.g. set by an HPA
    seen: list[bool] = []
    scaler = Autoscaler(target=target, queue="fixed", pool=pool, policy=lambda: knobs(2, 2),
                        hands_off_when_fixed=hands_off, on_tick=lambda t: seen.append(t.autoscaling))
    await scaler.step()
    await scaler.step()
    assert target.writes == writes and seen == [not hands_off] * 2
    if hands_off:
        assert scaler.last is not None and scaler.last.desired == 5 and "autoscaling off" in scaler.last.reason


async def test_an_undeclared_queue_is_waited_for(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    target = Recorder(1)
    scaler = Autoscaler(target=target, queue="later", pool=pool, policy=lambda: knobs(1, 10))
    assert await scaler.step() == loop_delay(1, base=1.0, cap=MAX_BACKOFF)
    await backlog(conn, "later", 20)
    assert await scaler.step() == scaler.interval and target.writes == [4] and scaler.failures == 0


class FailingSource:
    """A backend whose plan cannot be had: raises what it is given, counts resets."""

    def __init__(self, error: Exception) -> None:
        self.error, self.resets = error, 0

    async def plan(self) -> Plan:
        raise self.error

    async def reset(self) -> None:
        self.resets += 1


async def test_failures_back_off_and_never_end_the_loop() -> None:
    source = FailingSource(RuntimeError("API server says no"))
    reported: list[str] = []
    scaler = Autoscaler(target=Recorder(1), source=source, interval=0.5,
                        on_failure=lambda reason, exc: reported.append(reason))
    delays = [await scaler.step() for _ in range(8)]
    assert delays == [loop_delay(n, base=1.0, cap=MAX_BACKOFF) for n in range(1, 9)]
    assert delays[-1] == MAX_BACKOFF and source.resets == 8 and scaler.failures == 8
    source.error = NotReady("waiting for the database", retry_after=2.0)
    assert await scaler.step() == 2.0  # an expected wait has its own pace, not the backoff's
    # Every failed tick is reported (the operator counts them: shoal_autoscaler_tick_failures_total),
    # with a cause from a fixed set so the metric's label stays bounded.
    source.error = asyncpg.exceptions.ConnectionDoesNotExistError("gone")
    await scaler.step()
    source.error = UnknownQueueError("nope")
    await scaler.step()
    assert reported == ["other"] * 8 + ["not_ready", "database", "unknown_queue"]


async def test_a_drain_objective_uses_the_workers_measured_speed(conn: asyncpg.Connection,
                                                                 pool: asyncpg.Pool) -> None:
    """Until a worker has reported its runs, the default rule; then the drain objective, from the
    heartbeats' throughput, counting past the default cap far enough for the objective."""
    await backlog(conn, "slo", 2000)
    target = Recorder(1)
    policy = Policy(min_replicas=1, max_replicas=16, concurrency=10, scale_down_delay=60.0, drain_within=30.0)
    scaler = Autoscaler(target=target, queue="slo", pool=pool, policy=lambda: policy)
    await scaler.step()
    assert target.writes == [16] and scaler.last is not None and "≥161 ready" in scaler.last.reason
    # A worker reports 100 runs of 0.5 s each between its last two beats.
    await conn.execute("SELECT shoal.heartbeat('w', 'slo', 'h', 1, 0, 0)")
    await conn.execute("UPDATE shoal.workers SET heartbeat_at = heartbeat_at - interval '5 s'")
    await conn.execute("SELECT shoal.heartbeat('w', 'slo', 'h', 1, 100, 50)")
    await scaler.step()
    assert scaler.state.speed.seconds_per_run == pytest.approx(0.5)
    await scaler.step()  # counted in full now: 2,000 jobs at 20/s a replica in 30 s need 4 (after the window)
    assert scaler.last is not None and "2,000 jobs at 20/s per replica" in scaler.last.reason
    assert scaler.last.recommendation == 4 and scaler.last.desired == 16  # down waits for the window
