"""Flow control and job semantics: global rate limit and concurrency cap across real worker
processes, unique jobs, batch tasks, chaining, waiting, cancellation, retention, pause."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from helpers import eventually, running_worker, spawn_worker
from shoal import client, queues
from shoal.client import NewJob
from shoal.errors import PermanentError
from shoal.ratelimit import RateLimit, parse_rate_limit
from shoal.tasks import Job, TaskRegistry, task

FAST = ("--heartbeat-interval", "0.5", "--stale-after", "5", "--poll-interval", "0.2")


async def all_done(conn: asyncpg.Connection, n: int) -> bool:
    return await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE state = 'succeeded'") >= n


async def drain_with_processes(db_url: str, conn: asyncpg.Connection, queue: str, n: int, *, processes: int,
                               concurrency: int, tmp_path: Path, timeout: float) -> None:
    """Competing `shoal worker` processes run the queue's n jobs, then stop cleanly (exit 0)."""
    procs = [spawn_worker(db_url, queue, "--concurrency", str(concurrency), *FAST, log_path=tmp_path / f"w{i}.log")
             for i in range(processes)]
    try:
        await eventually(lambda: all_done(conn, n), timeout=timeout, interval=0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(20) == 0


@pytest.mark.slow
async def test_rate_limit_holds_across_four_worker_processes(db_url: str, conn: asyncpg.Connection,
                                                             tmp_path: Path) -> None:
    limit, n = 20, 120
    await queues.declare_queue(conn, "rl", rate_limit=RateLimit(limit, 1), keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("rl", "shoal.noop") for _ in range(n)])
    await drain_with_processes(db_url, conn, "rl", n, processes=4, concurrency=10, tmp_path=tmp_path, timeout=60)
    starts = [r["t"] for r in await conn.fetch(
        "SELECT extract(epoch FROM started_at)::float8 AS t FROM shoal.jobs ORDER BY started_at")]
    assert len(starts) == n
    # Every window of one period, anchored at any start, holds at most `limit` starts.
    j = 0
    busiest = 0
    for i, t in enumerate(starts):
        while j < n and starts[j] < t + 1.0:
            j += 1
        busiest = max(busiest, j - i)
    assert busiest <= limit, f"a 1 s window held {busiest} starts, limit {limit}"
    # ...and the limit is used, not starved: the busiest window is full, and the run
    # takes about n / limit periods, not much longer.
    assert busiest == limit
    span = starts[-1] - starts[0]
    assert span < (n / limit) * 1.5, f"{n} starts at {limit}/s took {span:.1f}s"


@pytest.mark.slow
async def test_concurrency_cap_never_exceeded(db_url: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    cap, n = 3, 40
    await queues.declare_queue(conn, "cap", concurrency_limit=cap, keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("cap", "test.sleep_ms", {"ms": 100}) for _ in range(n)])
    await drain_with_processes(db_url, conn, "cap", n, processes=3, concurrency=5, tmp_path=tmp_path, timeout=90)
    rows = await conn.fetch("SELECT started_at, finished_at FROM shoal.jobs")
    overlap = max(sum(1 for o in rows if o["started_at"] <= r["started_at"] < o["finished_at"]) for r in rows)
    assert overlap <= cap, f"{overlap} jobs ran at once, cap {cap}"
    assert overlap == cap, "the cap is used, not starved"


async def test_leaked_running_rows_do_not_hold_cap_slots(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "leak", concurrency_limit=2)
    await client.enqueue_many(conn, [NewJob("leak", "t") for _ in range(4)])
    await conn.fetch("SELECT shoal.heartbeat('gone', 'leak', 'h', 1)")
    assert len(await conn.fetch("SELECT * FROM shoal.claim('leak', 'gone', 10)")) == 2
    await conn.execute("UPDATE shoal.workers SET heartbeat_at = now() - interval '1 hour'")
    await conn.fetch("SELECT shoal.heartbeat('alive', 'leak', 'h', 2)")
    got = await conn.fetch("SELECT * FROM shoal.claim('leak', 'alive', 10, interval '30 seconds')")
    assert len(got) == 2 and all(r["id"] is not None for r in got), "slots of a dead worker are free"


async def test_unique_key_yields_one_job_under_concurrent_adds(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "u")
    conns = [await asyncpg.connect(db_url) for _ in range(10)]
    try:
        ids = await asyncio.gather(*(client.enqueue(c, "u", "t", unique_key="report-2026-11-23") for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert len(set(ids)) == 1
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 1
    # Once the job is finished, the key is free again.
    await conn.execute("UPDATE shoal.jobs SET state = 'succeeded'")
    again = await client.enqueue(conn, "u", "t", unique_key="report-2026-11-23")
    assert again != ids[0]
    mixed = await client.enqueue_many(conn, [NewJob("u", "t", unique_key="k1"), NewJob("u", "t"),
                                             NewJob("u", "t", unique_key="k1")])
    assert mixed[0] == mixed[2] != mixed[1]


async def test_batch_task_retries_only_failed_items(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "b", keep_succeeded_seconds=3600)
    calls: list[list[int]] = []
    reg = TaskRegistry()

    @task("resize", batch=True, batch_size=50, registry=reg)
    async def resize(jobs: list[Job]) -> dict[int, Exception]:
        calls.append([j.payload["n"] for j in jobs])
        return {j.id: RuntimeError("odd") for j in jobs if j.payload["n"] % 2 and j.attempt == 1}

    ids = await client.enqueue_many(conn, [NewJob("b", "resize", {"n": n}) for n in range(20)])
    async with running_worker(db_url, "b", reg, concurrency=50, backoff_base=0.1, backoff_cap=0.2):
        results = await client.wait(conn, ids, timeout=30)
    assert {r.state for r in results.values()} == {"succeeded"}
    attempts = {r["n"]: r["attempts"] for r in await conn.fetch(
        "SELECT (payload->>'n')::int AS n, attempts FROM shoal.jobs")}
    assert all(attempts[n] == (2 if n % 2 else 1) for n in range(20))
    assert any(len(c) > 1 for c in calls), "items arrive as a batch"


async def test_chained_jobs_commit_only_with_success(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "c1")
    await queues.declare_queue(conn, "c2")
    reg = TaskRegistry()

    @task("parent", registry=reg)
    async def parent(job: Job) -> None:
        job.enqueue("c2", "child", {"from": job.id})
        job.enqueue("c2", "child", {"from": job.id}, delay=3600)
        if job.payload.get("fail"):
            raise PermanentError("parent failed")

    @task("orphan_maker", registry=reg)
    async def orphan_maker(job: Job) -> None:
        job.enqueue("not-declared", "child")

    good = await client.enqueue(conn, "c1", "parent", {})
    bad = await client.enqueue(conn, "c1", "parent", {"fail": True})
    orphan = await client.enqueue(conn, "c1", "orphan_maker", max_attempts=1)
    async with running_worker(db_url, "c1", reg):
        res = await client.wait(conn, [good, bad, orphan], timeout=30)
    assert res[good].state == "succeeded" and res[bad].state == "failed"
    children = await conn.fetch("SELECT (payload->>'from')::bigint AS parent, run_at > now() AS later "
                                "FROM shoal.jobs WHERE queue = 'c2'")
    assert sorted((r["parent"], r["later"]) for r in children) == [(good, False), (good, True)]
    assert res[orphan].state == "failed" and "not-declared" in (res[orphan].error or "")


async def test_wait_for_first_and_all(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "wf")
    fast = await client.enqueue(conn, "wf", "shoal.sleep", {"seconds": 0.1})
    slow = await client.enqueue(conn, "wf", "shoal.sleep", {"seconds": 1.0})
    async with client.Client(await asyncpg.create_pool(db_url, min_size=1, max_size=3)) as c:
        async with running_worker(db_url, "wf"):
            first = await c.wait_for_first([slow, fast], timeout=20)
            assert first.id == fast
            both = await c.wait_for_all([fast, slow], timeout=20)
            assert set(both) == {fast, slow}


async def test_cancel_pending_and_running(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "cx")
    interrupted = asyncio.Event()
    reg = TaskRegistry()

    @task("long", registry=reg)
    async def long(job: Job) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    pending = await client.enqueue(conn, "cx", "long", delay=3600)
    assert await client.cancel(conn, [pending]) == {pending: "cancelled"}
    running = await client.enqueue(conn, "cx", "long", max_attempts=5)
    async with running_worker(db_url, "cx", reg):
        await eventually(lambda: conn.fetchval("SELECT state = 'running' FROM shoal.jobs WHERE id = $1", running))
        assert await client.cancel(conn, [running]) == {running: "cancelling"}
        result = (await client.wait(conn, [running], timeout=20))[running]
    assert interrupted.is_set()
    assert (result.state, result.attempts) == ("cancelled", 1), "cancelled, not retried"


async def test_retention_prunes_what_it_should(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "keep", keep_succeeded_seconds=1)
    reg = TaskRegistry()

    @task("ok", registry=reg)
    async def ok(job: Job) -> None:
        if job.payload.get("fail"):
            raise PermanentError("kept for inspection")

    ids = await client.enqueue_many(conn, [NewJob("keep", "ok", {}) for _ in range(5)])
    failed = await client.enqueue(conn, "keep", "ok", {"fail": True})
    async with running_worker(db_url, "keep", reg, prune_interval=0.3):
        await client.wait(conn, [*ids, failed], timeout=20)
        assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE state = 'succeeded'") == 5, \
            "succeeded jobs are kept for keep_succeeded"
        await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM shoal.jobs WHERE state = 'succeeded'"),
                         timeout=15)
    assert await conn.fetchval("SELECT state::text FROM shoal.jobs WHERE id = $1", failed) == "failed"


async def test_prune_works_in_small_batches(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "pb", keep_failed_seconds=0)
    await client.enqueue_many(conn, [NewJob("pb", "t") for _ in range(25)])
    await conn.execute("UPDATE shoal.jobs SET state = 'failed', finished_at = now() - interval '1 minute'")
    assert [await conn.fetchval("SELECT shoal.prune(10)") for _ in range(4)] == [10, 10, 5, 0]


async def test_pause_and_resume(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "pz", paused=True)
    job_id = await client.enqueue(conn, "pz", "shoal.noop")
    async with running_worker(db_url, "pz"):
        await asyncio.sleep(1.0)
        assert await conn.fetchval("SELECT state::text FROM shoal.jobs WHERE id = $1", job_id) == "pending"
        await queues.set_paused(conn, "pz", False)
        assert (await client.wait(conn, [job_id], timeout=10))[job_id].state == "succeeded"


@pytest.mark.parametrize(("spec", "expected"), [("100/s", (100, 1)), ("10/m", (10, 60)), (" 5 / h ", (5, 3600))])
def test_rate_limit_spellings(spec: str, expected: tuple[int, int]) -> None:
    rl = parse_rate_limit(spec)
    assert (rl.limit, rl.period_seconds) == expected


@pytest.mark.parametrize("spec", ["0/s", "10", "10/d", "-1/s", "ten/s", ""])
def test_bad_rate_limits_name_the_field(spec: str) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        parse_rate_limit(spec)
