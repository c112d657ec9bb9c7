"""A scale-down that spares busy pods (shoal.operator.deletion_cost and the Deployment scale target).

* The decision is pure: a pod's cost is its workers' running jobs; idle pods cost 0, so the
  ReplicaSet deletes them first; only pods of the Queue's own Deployment are annotated.
* The query reads running jobs per worker from PostgreSQL: leased jobs, open held batches,
  idle live workers (0), not dead ones.
* The scale target annotates before a scale-down only, writes only changed costs, and never
  lets a failure block the scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import pytest

from shoal.operator import kube
from shoal.operator.deletion_cost import (
    DELETION_COST,
    LIVE_SECONDS,
    MAX_COST,
    cost_patches,
    deletion_costs,
    pod_of_worker,
    running_by_worker,
)
from shoal.operator.scaling import DeploymentScaleTarget
from shoal.queues import QueueConfig, put_queue
from shoal.scaler.decision import Decision

DEPLOY = "emails-workers"
POD_A, POD_B, POD_C = f"{DEPLOY}-5d8f7c9b4-abcde", f"{DEPLOY}-5d8f7c9b4-fghij", f"{DEPLOY}-5d8f7c9b4-klmno"


@pytest.mark.parametrize(("worker_id", "pod"), [
    (f"{POD_A}-1-3fa2c1", POD_A),                  # POD_NAME (or a hostname equal to it), pid, random
    ("emails-workers-5d8f7c9b4-abcde-12345-00ff00", POD_A),
    ("laptop.local-7-a1b2c3", "laptop.local"),
    ("no-pid-here", None),                          # not <name>-<pid>-<random>
    ("Upper-1-abcdef", None),                       # not a pod name
    ("-1-abcdef", None),
    ("plain", None),
])
def test_pod_of_worker(worker_id: str, pod: str | None) -> None:
    assert pod_of_worker(worker_id) == pod


def test_idle_pods_cost_less_and_cost_is_running_jobs() -> None:
    running = {f"{POD_A}-1-aaaaaa": 3, f"{POD_B}-1-bbbbbb": 0, f"{POD_C}-1-cccccc": 1,
               f"{POD_C}-2-dddddd": 2}  # two worker processes in one pod: their jobs add up
    costs = deletion_costs(running, DEPLOY)
    assert costs == {POD_A: 3, POD_B: 0, POD_C: 3}
    assert min(costs, key=costs.__getitem__) == POD_B  # the idle pod is the cheapest to delete


def test_only_the_deployments_own_pods_are_annotated() -> None:
    running = {"laptop-1-aaaaaa": 4, "other-workers-5d8f7c9b4-abcde-1-aaaaaa": 2,
               f"{POD_A}-1-aaaaaa": 1, "garbage": 9}
    assert deletion_costs(running, DEPLOY) == {POD_A: 1}
    assert deletion_costs({}, DEPLOY) == {}


def test_costs_are_capped_to_the_annotations_int32_and_never_negative() -> None:
    assert deletion_costs({f"{POD_A}-1-a": MAX_COST, f"{POD_A}-2-b": 5, f"{POD_B}-1-c": -3}, DEPLOY) == \
        {POD_A: MAX_COST, POD_B: 0}


def test_only_changed_costs_are_written() -> None:
    assert cost_patches({POD_A: 2, POD_B: 0}, {}) == {POD_A: 2, POD_B: 0}  # after a restart: all
    assert cost_patches({POD_A: 2, POD_B: 0}, {POD_A: 2, POD_B: 5}) == {POD_B: 0}  # B went idle
    assert cost_patches({POD_A: 2}, {POD_A: 2}) == {}


# ---------------------------------------------------------------- the query


async def test_running_jobs_per_worker_from_postgres(db_url: str, conn: asyncpg.Connection) -> None:
    await put_queue(conn, QueueConfig(name="mail"))
    await put_queue(conn, QueueConfig(name="other"))
    busy, idle, dead, unbeaten = (f"{POD_A}-1-aaaaaa", f"{POD_B}-1-bbbbbb", f"{POD_C}-1-cccccc",
                                  f"{DEPLOY}-5d8f7c9b4-pqrst-1-dddddd")
    for worker, queue in ((busy, "mail"), (idle, "mail"), (dead, "mail"), (f"{POD_A}-9-eeeeee", "other")):
        await conn.execute("SELECT shoal.heartbeat($1, $2, 'host', 1)", worker, queue)
    await conn.execute("UPDATE shoal.workers SET heartbeat_at = now() - make_interval(secs => $2) WHERE id = $1",
                       dead, LIVE_SECONDS + 5)

    async def job(queue: str, worker: str | None, state: str = "running") -> int:
        job_id = await conn.fetchval("INSERT INTO shoal.jobs (queue, task, max_attempts) VALUES ($1, 't', 3) "
                                     "RETURNING id", queue)
        await conn.execute("UPDATE shoal.jobs SET state = $2::shoal.job_state, worker_id = $3 WHERE id = $1",
                           job_id, state, worker)
        return int(job_id)

    await job("mail", busy)
    await job("mail", busy)
    await job("mail", busy, "succeeded")  # finished: not running
    await job("mail", unbeaten)           # running, though its worker has not beaten yet
    await job("other", idle)              # another queue's job
    held = [await job("mail", None, "pending") for _ in range(3)]

    # A held batch of `idle`: its transaction is open while the jobs run, so they count.
    holder = await asyncpg.connect(db_url)
    try:
        tx = holder.transaction()
        await tx.start()
        xact = await holder.fetchval("SELECT pg_current_xact_id()")
        await conn.execute("INSERT INTO shoal.held_batches (worker_id, batch, xact, ids) VALUES ($1, 1, $2, $3)",
                           idle, xact, held)
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        try:
            assert await running_by_worker(pool, "mail") == {busy: 2, idle: 3, unbeaten: 1}
            await tx.rollback()  # the batch ended: its jobs run no more
            assert await running_by_worker(pool, "mail") == {busy: 2, idle: 0, unbeaten: 1}
            assert await running_by_worker(pool, "nothing") == {}
        finally:
            await pool.close()
    finally:
        await holder.close()


# ---------------------------------------------------------------- the scale target


def decision(desired: int, direction: str) -> Decision:
    return Decision(desired=desired, reason="test", direction=direction, recommendation=desired)  # type: ignore[arg-type]


class FakeKube:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, missing: frozenset[str] = frozenset(),
                 failing: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.missing, self.failing = missing, failing
        monkeypatch.setattr(kube, "annotate_pod", self.annotate_pod)
        monkeypatch.setattr(kube, "scale_deployment", self.scale_deployment)

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        if name in self.failing:
            raise RuntimeError("forbidden")
        if name in self.missing:
            raise kube.NotFound(name)
        self.calls.append(("annotate", (namespace, name, dict(annotations))))

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> int:
        self.calls.append(("scale", (namespace, name, replicas)))
        return replicas


def reader(*answers: Mapping[str, int] | Exception) -> Any:
    queue = list(answers)

    async def running() -> Mapping[str, int]:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return running


async def test_a_scale_down_annotates_every_pod_first_then_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKube(monkeypatch)
    target = DeploymentScaleTarget("prod", DEPLOY, running=reader(
        {f"{POD_A}-1-a": 4, f"{POD_B}-1-b": 0}, {f"{POD_A}-1-a": 4, f"{POD_B}-1-b": 1}))
    await target.set_replicas(1, decision(1, "down"))
    assert fake.calls == [
        ("annotate", ("prod", POD_A, {DELETION_COST: "4"})),
        ("annotate", ("prod", POD_B, {DELETION_COST: "0"})),
        ("scale", ("prod", DEPLOY, 1)),
    ]
    fake.calls.clear()
    await target.set_replicas(3, decision(3, "up"))  # scaling up deletes no pod: nothing to annotate
    assert fake.calls == [("scale", ("prod", DEPLOY, 3))]
    fake.calls.clear()
    await target.set_replicas(2, decision(2, "down"))  # only the changed cost is written again
    assert fake.calls == [("annotate", ("prod", POD_B, {DELETION_COST: "1"})), ("scale", ("prod", DEPLOY, 2))]


async def test_nothing_blocks_the_scale_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed read, a pod already gone, a refused patch (RBAC): logged, and the scale goes ahead."""
    fake = FakeKube(monkeypatch, missing=frozenset({POD_B}), failing=frozenset({POD_C}))
    target = DeploymentScaleTarget("prod", DEPLOY, running=reader(
        OSError("database down"), {f"{POD_A}-1-a": 1, f"{POD_B}-1-b": 0, f"{POD_C}-1-c": 2}))
    await target.set_replicas(2, decision(2, "down"))
    assert fake.calls == [("scale", ("prod", DEPLOY, 2))]
    fake.calls.clear()
    await target.set_replicas(1, decision(1, "down"))
    assert fake.calls == [("annotate", ("prod", POD_A, {DELETION_COST: "1"})), ("scale", ("prod", DEPLOY, 1))]
    assert target.costs_written == {POD_A: 1}  # the gone and the refused pod are tried again next time


async def test_without_a_reader_or_to_zero_it_only_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKube(monkeypatch)
    await DeploymentScaleTarget("prod", DEPLOY).set_replicas(1, decision(1, "down"))
    assert fake.calls == [("scale", ("prod", DEPLOY, 1))]
    fake.calls.clear()
    target = DeploymentScaleTarget("prod", DEPLOY, running=reader(AssertionError("not read: every pod goes")))
    await target.set_replicas(0, decision(0, "down"))
    assert fake.calls == [("scale", ("prod", DEPLOY, 0))]
