"""Held claims (sql/004_held_claims.sql): short jobs are locked by an open transaction instead of
leased, written once. These tests hold that fast path to the guarantees of the leased one:
at-least-once under kill -9 (a database crash during held batches is in test_at_least_once.py),
the attempt of a job that kills its worker counted, no transaction held open by a slow job,
follow-ups and retention as before."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from helpers import eventually, running_worker, spawn_worker
from shoal import client, queries, queues
from shoal.client import NewJob, done_mentions
from shoal.tasks import Job, TaskRegistry, task
from shoal.worker import metrics
from shoal.worker.held import HeldBatch, close_plan
from shoal.worker.known_types import id_array
from shoal.worker.outcome import Outcome

FAST_RESCUE = ("--heartbeat-interval", "0.5", "--stale-after", "3", "--poll-interval", "0.2")
WARM_UP = 1500  # no-op jobs after which a worker knows its jobs are short and claims held


def held_claims(queue: str) -> float:
    return metrics.REGISTRY.get_sample_value("shoal_claims_total", {"queue": queue, "mode": "held"}) or 0.0


async def states(conn: asyncpg.Connection, queue: str) -> dict[str, int]:
    rows = await conn.fetch("SELECT state::text, count(*) FROM shoal.jobs WHERE queue = $1 GROUP BY 1", queue)
    return {r["state"]: r["count"] for r in rows}


# -- the SQL contract ---------------------------------------------------------------------------
async def _hold(url: str, queue: str, worker: str, batch: int, limit: int = 10
                ) -> tuple[asyncpg.Connection, list[int], list[int]]:
    """Open a held batch the way a worker does; returns its connection (transaction open),
    the ids it locked, and the ids hold_batch reported as left by a dead batch."""
    conn = await asyncpg.connect(url)
    await conn.execute("BEGIN")
    rows = await conn.fetch(queries.CLAIM_HELD, queue, limit, False)  # as a worker claims between full scans
    ids = [r["id"] for r in rows]
    if not ids:
        return conn, [], []
    other = await asyncpg.connect(url)
    try:
        died = [r[0] for r in await other.fetch(queries.HOLD_BATCH, worker, batch, rows[0]["xact"], id_array(ids))]
    finally:
        await other.close()
    return conn, ids, died


async def test_a_dead_held_batch_goes_back_suspect_and_a_poison_job_fails_alone(
        db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "hd", max_attempts=2)
    ids = await client.enqueue_many(conn, [NewJob("hd", "shoal.noop") for _ in range(5)])
    first, locked, died = await _hold(db_url, "hd", "w1", 1)
    assert sorted(locked) == ids and died == []
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE state = 'pending' AND attempts = 0") == 5, \
        "held jobs are not written at claim"
    first.terminate()  # the worker dies with the batch in hand: PostgreSQL rolls its transaction back
    await eventually(lambda: conn.fetchval("SELECT pg_xact_status(xact) = 'aborted' FROM shoal.held_batches"))
    assert await conn.fetchval("SELECT shoal.rescue_held()") == 5
    rows = await conn.fetch("SELECT state::text, attempts, suspect, last_error FROM shoal.jobs ORDER BY id")
    assert [(r["state"], r["attempts"], r["suspect"]) for r in rows] == [("pending", 0, True)] * 5, \
        "which of the five killed the worker is unknown: none is charged, all go back to run alone"
    assert "died" in rows[0]["last_error"]
    assert await conn.fetchval("SELECT count(*) FROM shoal.held_batches") == 0
    again, locked, _ = await _hold(db_url, "hd", "w2", 1)
    await again.close()
    assert locked == [], "suspect jobs are never held again"

    # Alone, a job that kills its worker is charged, and fails after max_attempts.
    stale = timedelta(seconds=1)
    poison = None
    # Rescue trusts no missed heartbeat within `stale` of the server's start: in a session whose
    # first test this is, the server may have started less than a second ago.
    await eventually(lambda: conn.fetchval("SELECT pg_postmaster_start_time() < now() - interval '1 second'"))
    for attempt, state in ((1, "pending"), (2, "failed")):
        await conn.execute("SELECT shoal.heartbeat('w3', 'hd', 'h', 1)")
        rows = await conn.fetch(queries.CLAIM, "hd", "w3", 10, stale, True, timedelta(0))
        assert len(rows) == 1, "suspects are claimed one at a time"
        poison = poison or rows[0]["id"]
        assert rows[0]["id"] == poison
        await conn.execute("UPDATE shoal.workers SET heartbeat_at = now() - interval '1 minute'")  # w3 died
        assert await conn.fetchval("SELECT shoal.rescue($1)", stale) == 1
        row = await conn.fetchrow("SELECT state::text, attempts, last_error FROM shoal.jobs WHERE id = $1", poison)
        assert (row["state"], row["attempts"]) == (state, attempt)
        assert "alone" in row["last_error"]
        # Only the poison job is due for the next round.
        await conn.execute("UPDATE shoal.jobs SET run_at = now() + (CASE WHEN id = $1 THEN -1 ELSE 3600 END) "
                           "* interval '1 second'", poison)
    others = await conn.fetch("SELECT attempts, state::text FROM shoal.jobs WHERE id <> $1", poison)
    assert {(r["attempts"], r["state"]) for r in others} == {(0, "pending")}, "its neighbours lost nothing"


async def test_a_leased_claim_rescues_dead_held_batches_first(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "hl")
    ids = await client.enqueue_many(conn, [NewJob("hl", "shoal.noop") for _ in range(3)])
    held, _, _ = await _hold(db_url, "hl", "w1", 7)
    held.terminate()
    await eventually(lambda: conn.fetchval("SELECT pg_xact_status(xact) = 'aborted' FROM shoal.held_batches"))
    rows = await conn.fetch(queries.CLAIM, "hl", "w2", 10, timedelta(seconds=30), False, timedelta(0))
    assert rows == [], "jobs of a dead batch are suspect: an ordinary claim leaves them to run alone"
    rows = await conn.fetch(queries.CLAIM, "hl", "w2", 10, timedelta(seconds=30), True, timedelta(0))
    assert [r["id"] for r in rows] == ids[:1] and rows[0]["attempts"] == 1, "the dead held run is not counted"


async def test_a_finished_held_batch_leaves_no_trace(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "hf", keep_succeeded_seconds=3600)
    ids = await client.enqueue_many(conn, [NewJob("hf", "shoal.noop") for _ in range(4)])
    held, locked, _ = await _hold(db_url, "hf", "w1", 1)
    ok, fail, lease = locked[:2], locked[2], locked[3]
    await held.execute(queries.FINISH_HELD, "w1", "hf", 1, None, [lease], ok, [fail], ["boom"], [0.0], [])
    await held.execute("COMMIT")
    await held.close()
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, state::text, attempts, worker_id FROM shoal.jobs")}
    assert [(rows[i]["state"], rows[i]["attempts"], rows[i]["worker_id"]) for i in ids] == [
        ("succeeded", 1, "w1"), ("succeeded", 1, "w1"), ("pending", 1, None), ("running", 1, "w1")]
    assert await conn.fetchval("SELECT count(*) FROM shoal.held_batches") == 0


async def test_an_all_successful_batch_is_finished_from_its_announcement(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "ho", keep_succeeded_seconds=3600)
    ids = await client.enqueue_many(conn, [NewJob("ho", "shoal.noop") for _ in range(3)])
    held, locked, _ = await _hold(db_url, "ho", "w1", 1)
    assert sorted(locked) == ids
    assert await held.fetchval(queries.FINISH_HELD_OK, "w1", "ho", 2) is False, "no such batch: nothing written"
    assert await held.fetchval(queries.FINISH_HELD_OK, "w1", "ho", 1) is True
    await held.execute("COMMIT")
    await held.close()
    rows = await conn.fetch("SELECT state::text, attempts, worker_id FROM shoal.jobs ORDER BY id")
    assert [tuple(r) for r in rows] == [("succeeded", 1, "w1")] * 3, "the announced ids, recorded as held successes"
    assert await conn.fetchval("SELECT count(*) FROM shoal.held_batches") == 0


async def test_limited_or_paused_queues_are_never_held(conn: asyncpg.Connection) -> None:
    from shoal.ratelimit import RateLimit

    await queues.declare_queue(conn, "rl", rate_limit=RateLimit(5, 1))
    await queues.declare_queue(conn, "cc", concurrency_limit=2)
    await queues.declare_queue(conn, "pz")
    await queues.set_paused(conn, "pz", True)
    for q in ("rl", "cc", "pz"):
        await client.enqueue(conn, q, "shoal.noop")
        async with conn.transaction():
            rows = await conn.fetch(queries.CLAIM_HELD, q, 10, True)
        assert [(r["id"], r["task"]) for r in rows] == [(None, "limited")], q


# -- the decision -------------------------------------------------------------------------------
def _job(i: int) -> Job:
    return Job(i, "q", "t", "{}", 1, 3, None)


def test_close_plan_records_finished_leases_running_and_releases_unstarted_on_stop() -> None:
    batch = HeldBatch(1, None, None, None, [1, 2, 3, 4, 5])  # type: ignore[arg-type]
    with_followup = _job(2)
    with_followup.enqueue("q", "child")
    batch.add(_job(1))  # a success is the job itself
    batch.add(with_followup)
    batch.add(Outcome(_job(3), "fail", "boom", 1.0))
    running = close_plan(batch, stopping=False, started={4})
    assert [f.id for f in running.record] == [1, 3]
    assert running.relay == [with_followup], "a success with follow-ups takes the leased path"
    assert sorted(running.lease_ids) == [2, 4, 5] and running.released == []
    stopping = close_plan(batch, stopping=True, started={4})
    assert sorted(stopping.lease_ids) == [2, 4] and stopping.released == [5], \
        "a stopping worker gives back what never started, attempt not counted"
    assert not running.all_ok and not stopping.all_ok


def test_close_plan_finishes_an_all_successful_batch_from_its_announcement() -> None:
    def closed(*kinds: str) -> bool:
        batch = HeldBatch(1, None, None, None, list(range(1, len(kinds) + 2)))  # type: ignore[arg-type]
        for i, kind in enumerate(kinds, 1):
            batch.add(_job(i) if kind == "ok" else Outcome(_job(i), kind, "boom"))
        batch.add(_job(len(kinds) + 1))
        return close_plan(batch, stopping=False, started=set()).all_ok

    assert closed("ok", "ok"), "every job succeeded: sql/017's finish_held_ok, no ids sent"
    assert not closed("ok", "fail") and not closed("cancel", "ok"), "a failure or a cancellation is sent"
    unfinished = HeldBatch(2, None, None, None, [1, 2])  # type: ignore[arg-type]
    unfinished.add(_job(1))
    assert not close_plan(unfinished, stopping=False, started={2}).all_ok, "a running job becomes a lease"


def test_done_notifications_name_ids_or_ranges() -> None:
    assert done_mentions("5", {5}) and not done_mentions("5", {6})
    assert done_mentions("3,9", {9}) and done_mentions("10-20", {15}) and not done_mentions("10-20", {21})
    assert done_mentions("garbled", {1}), "an unreadable payload means: look again"


# -- the worker ---------------------------------------------------------------------------------
async def test_short_jobs_are_held_and_each_runs_once(db_url: str, conn: asyncpg.Connection) -> None:
    n = 6000
    await queues.declare_queue(conn, "hs", keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("hs", "shoal.noop", {"n": i}) for i in range(n)])
    async with running_worker(db_url, "hs", concurrency=50):
        await eventually(lambda: _all(conn, "hs", n), timeout=60)
    assert held_claims("hs") > 0, "a worker that measured short jobs claims them held"
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE attempts <> 1") == 0
    assert await conn.fetchval("SELECT count(*) FROM shoal.held_batches") == 0


async def test_a_slow_job_in_a_held_batch_becomes_a_lease(db_url: str, conn: asyncpg.Connection) -> None:
    from shoal.worker.held import HOLD_BUDGET

    await queues.declare_queue(conn, "hw", keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("hw", "shoal.noop", priority=1) for _ in range(WARM_UP)])
    async with running_worker(db_url, "hw", concurrency=20) as worker:
        await eventually(lambda: _all(conn, "hw", WARM_UP), timeout=60)
        before = held_claims("hw")
        slow = await client.enqueue(conn, "hw", "shoal.sleep", {"seconds": HOLD_BUDGET + 2})
        await eventually(lambda: asyncio.sleep(0, held_claims("hw") > before), timeout=10)

        async def leased() -> bool:
            row = await conn.fetchrow("SELECT state::text, worker_id FROM shoal.jobs WHERE id = $1", slow)
            return (row["state"], row["worker_id"]) == ("running", worker.config.worker_id)

        await eventually(leased, timeout=HOLD_BUDGET + 1.5, interval=0.05)
        # While it runs on as a lease, no transaction of ours is left open.
        open_tx = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")
        assert open_tx == 0
        result = await client.wait(conn, [slow], timeout=30)
    assert result[slow].state == "succeeded" and result[slow].attempts == 1


async def test_held_jobs_follow_ups_and_refusals(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "hp")
    await queues.declare_queue(conn, "hc")
    reg = TaskRegistry()

    @task("noop", registry=reg)
    async def noop(job: Job) -> None:
        return None

    @task("parent", registry=reg)
    async def parent(job: Job) -> None:
        job.enqueue("hc", "child", {"from": job.id})

    @task("orphan_maker", registry=reg)
    async def orphan_maker(job: Job) -> None:
        job.enqueue("not-declared", "child")

    await client.enqueue_many(conn, [NewJob("hp", "noop", priority=1) for _ in range(WARM_UP)])
    parents = await client.enqueue_many(conn, [NewJob("hp", "parent") for _ in range(20)])
    orphan = await client.enqueue(conn, "hp", "orphan_maker", max_attempts=1)
    async with running_worker(db_url, "hp", reg, concurrency=20):
        res = await client.wait(conn, [*parents, orphan], timeout=60)
    assert held_claims("hp") > 0
    assert {res[p].state for p in parents} == {"succeeded"}
    children = await conn.fetch("SELECT (payload->>'from')::bigint AS parent FROM shoal.jobs WHERE queue = 'hc'")
    assert sorted(r["parent"] for r in children) == sorted(parents)
    assert res[orphan].state == "failed" and "not-declared" in (res[orphan].error or "")


@pytest.mark.slow
async def test_kill_9_during_held_batches_loses_no_job(db_url: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    n = 40_000
    await queues.declare_queue(conn, "hk", keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("hk", "shoal.noop", {"n": i}) for i in range(n)])
    first = spawn_worker(db_url, "hk", "--concurrency", "100", *FAST_RESCUE, log_path=tmp_path / "w1.log")
    second = None
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) > 0 FROM shoal.held_batches"), timeout=60,
                         interval=0.001)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        in_hand = await conn.fetchval("SELECT count(*) FROM shoal.held_batches")
        assert (await states(conn, "hk")).get("succeeded", 0) < n, "the kill must hit the queue mid-drain"
        second = spawn_worker(db_url, "hk", "--concurrency", "100", *FAST_RESCUE, log_path=tmp_path / "w2.log")
        await eventually(lambda: _all(conn, "hk", n), timeout=120, interval=0.2)
        assert await states(conn, "hk") == {"succeeded": n}
        if in_hand:
            assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE suspect") > 0, \
                "the jobs in the killed worker's hands ran again, alone"
            assert await conn.fetchval("SELECT max(attempts) FROM shoal.jobs") == 1, \
                "a kill among a batch charges none of its jobs an attempt"
        assert await conn.fetchval("SELECT count(*) FROM shoal.held_batches") == 0
    finally:
        first.kill()
        if second is not None:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0


@pytest.mark.slow
async def test_a_job_that_kills_held_workers_ends_failed(db_url: str, conn: asyncpg.Connection,
                                                          tmp_path: Path) -> None:
    await queues.declare_queue(conn, "hx", max_attempts=2)
    await client.enqueue_many(conn, [NewJob("hx", "shoal.noop", priority=1) for _ in range(WARM_UP)])
    poison = await client.enqueue(conn, "hx", "test.die")

    async def failed() -> bool:
        return bool(await conn.fetchval("SELECT state = 'failed' FROM shoal.jobs WHERE id = $1", poison))

    runs = 0
    while not await failed():
        runs += 1
        assert runs <= 4, "the poison job must run out of attempts, not kill workers forever"
        proc = spawn_worker(db_url, "hx", "--concurrency", "20", *FAST_RESCUE, log_path=tmp_path / f"w{runs}.log")
        try:
            # Either it dies on the poison job, or (once that used up its attempts) it rescues
            # the dead worker's lease, which fails the job for good.
            await eventually(lambda: asyncio.sleep(0, proc.poll() is not None) if proc.poll() is not None  # noqa: B023
                             else failed(), timeout=30, interval=0.1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    row = await conn.fetchrow("SELECT attempts, last_error FROM shoal.jobs WHERE id = $1", poison)
    assert row["attempts"] == 2 and row["last_error"], dict(row)


async def _all(conn: asyncpg.Connection, queue: str, n: int) -> bool:
    return (await states(conn, queue)).get("succeeded", 0) >= n
