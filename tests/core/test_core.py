"""Schema, migrations, client and the in-process worker against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta

import asyncpg
import pytest

from helpers import eventually, running_worker
from shoal import client, queues
from shoal.backoff import LoopBackoff, retry_delay
from shoal.client import NewJob
from shoal.errors import PermanentError, UnknownQueueError, ValidationError
from shoal.migrate import available, migrate
from shoal.tasks import Job, TaskRegistry, task


async def job_row(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    return await conn.fetchrow("SELECT * FROM shoal.jobs WHERE id = $1", job_id)


# -- migrations -------------------------------------------------------------------------------
async def test_migrations_are_idempotent_and_safe_concurrently(server_url: str) -> None:
    conn = await asyncpg.connect(server_url)
    await conn.execute('DROP DATABASE IF EXISTS "mig_test" WITH (FORCE)')
    await conn.execute('CREATE DATABASE "mig_test"')
    await conn.close()
    url = server_url.rsplit("/", 1)[0] + "/mig_test"
    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    every = [m.version for m in available()]
    assert sorted(v for r in results for v in r) == every, "each migration applied exactly once"
    assert await migrate(url) == []
    conn = await asyncpg.connect(url)
    try:
        recorded = [r["version"] for r in await conn.fetch("SELECT version FROM shoal.migrations ORDER BY 1")]
        assert recorded == every
        schemas = {r["nspname"] for r in await conn.fetch(
            "SELECT DISTINCT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname IN ('jobs', 'queues', 'workers')")}
        assert schemas == {"shoal"}
        opts = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'shoal.jobs'::regclass")
        assert "fillfactor=70" in opts and any(o.startswith("autovacuum_vacuum_scale_factor") for o in opts)
    finally:
        await conn.close()


# -- enqueue -------------------------------------------------------------------------------------
async def test_enqueue_one_and_many_in_order(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "q1", max_attempts=7)
    one = await client.enqueue(conn, "q1", "t", {"a": 1}, priority=3)
    row = await job_row(conn, one)
    assert (row["state"], row["priority"], row["max_attempts"], row["attempts"]) == ("pending", 3, 7, 0)
    ids = await client.enqueue_many(conn, [NewJob("q1", "t", {"i": i}) for i in range(12_000)])
    assert len(ids) == 12_000 and ids == sorted(ids)
    payloads = await conn.fetch("SELECT id, payload FROM shoal.jobs WHERE id = ANY($1) ORDER BY id", ids[:3])
    assert [r["payload"] for r in payloads] == ['{"i": 0}', '{"i": 1}', '{"i": 2}']


async def test_sql_function_enqueue_for_other_languages(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "sqlq")
    job_id = await conn.fetchval("SELECT shoal.enqueue('sqlq', 'send', '{\"to\": \"x\"}'::jsonb, 5)")
    row = await job_row(conn, job_id)
    assert row["task"] == "send" and row["priority"] == 5 and row["max_attempts"] == 5
    with pytest.raises(asyncpg.PostgresError, match='unknown queue "ghost"'):
        await conn.fetchval("SELECT shoal.enqueue('ghost', 'send')")


async def test_transactional_enqueue_rolls_back_with_the_application(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "tx")
    await conn.execute("CREATE TABLE orders (id int)")
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (1)")
            await client.enqueue(conn, "tx", "ship", {"order": 1})
            raise RuntimeError("application error")
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
    assert await conn.fetchval("SELECT count(*) FROM orders") == 0
    async with conn.transaction():
        await conn.execute("INSERT INTO orders VALUES (2)")
        await client.enqueue(conn, "tx", "ship", {"order": 2})
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": {"x": float("nan")}}, "payload"),
        ({"delay": -1}, "delay"),
        ({"task": ""}, "task"),
        ({"queue": "Bad Name"}, "queue"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at"),
        ({"priority": 10**6}, "priority"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
async def test_bad_input_names_the_field(conn: asyncpg.Connection, kwargs: dict, field: str) -> None:
    await queues.declare_queue(conn, "v")
    args = {"queue": "v", "task": "t", "payload": None, **kwargs}
    with pytest.raises(ValidationError) as err:
        await client.enqueue(conn, args.pop("queue"), args.pop("task"), args.pop("payload"), **args)
    assert err.value.field == field and field in str(err.value)
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0


async def test_unknown_queue_is_an_error_naming_it(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "known")
    with pytest.raises(UnknownQueueError, match="'ghost'") as err:
        await client.enqueue_many(conn, [NewJob("known", "t"), NewJob("ghost", "t")])
    assert "shoal queue create ghost" in str(err.value)
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0, "the whole batch is refused"


async def test_delayed_jobs_wait_and_priority_orders_claims(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "p", keep_succeeded_seconds=3600)
    order: list[int] = []
    reg = TaskRegistry()

    @task("rec", registry=reg)
    async def rec(job: Job) -> None:
        order.append(job.payload["n"])

    await client.enqueue(conn, "p", "rec", {"n": 99}, delay=1.5)
    await client.enqueue_many(conn, [NewJob("p", "rec", {"n": n}, priority=n) for n in (1, 5, 3)])
    async with running_worker(db_url, "p", reg, concurrency=1):
        await eventually(lambda: asyncio.sleep(0, len(order) >= 3))
        assert order == [5, 3, 1]
        assert 99 not in order, "a delayed job must not run before its time"
        await eventually(lambda: asyncio.sleep(0, 99 in order), timeout=10)


async def test_jobs_that_wait_on_each_other_get_every_slot(db_url: str, conn: asyncpg.Connection) -> None:
    """Parked runners are woken a few at a time: each that takes a job must pass the work on,
    or jobs that need all `concurrency` slots at once would never all start."""
    await queues.declare_queue(conn, "gate")
    slots = 40
    started: list[Job] = []
    all_in = asyncio.Event()
    reg = TaskRegistry()

    @task("meet", registry=reg)
    async def meet(job: Job) -> None:
        started.append(job)
        if len(started) == slots:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 15)  # a job that never gets a slot fails them all

    before = time.time()
    ids = await client.enqueue_many(conn, [NewJob("gate", "meet") for _ in range(slots)])
    async with running_worker(db_url, "gate", reg, concurrency=slots):
        result = await client.wait(conn, ids, timeout=30)
    assert {r.state for r in result.values()} == {"succeeded"}
    assert all(j.scheduled_at is not None and before - 1 < j.scheduled_at.timestamp() < time.time()
               for j in started), "a job knows when it was due"


# -- worker outcomes -----------------------------------------------------------------------------
async def test_retries_with_backoff_then_success(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "r", keep_succeeded_seconds=3600)
    seen: list[int] = []
    reg = TaskRegistry()

    @task("flaky", registry=reg)
    async def flaky(job: Job) -> None:
        seen.append(job.attempt)
        if job.attempt < 3:
            raise RuntimeError(f"boom {job.attempt}")

    job_id = await client.enqueue(conn, "r", "flaky", max_attempts=5)
    async with running_worker(db_url, "r", reg, backoff_base=0.2, backoff_cap=1):
        result = await client.wait(conn, [job_id], timeout=20)
    assert result[job_id].state == "succeeded"
    assert seen == [1, 2, 3]
    row = await job_row(conn, job_id)
    assert row["attempts"] == 3 and "boom 2" in row["last_error"]


async def test_max_attempts_exhausted_fails_with_error_kept(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "mx")
    reg = TaskRegistry()

    @task("always", registry=reg)
    async def always(job: Job) -> None:
        raise ValueError("nope")

    job_id = await client.enqueue(conn, "mx", "always", max_attempts=2)
    async with running_worker(db_url, "mx", reg, backoff_base=0.05, backoff_cap=0.1):
        result = (await client.wait(conn, [job_id], timeout=20))[job_id]
    assert (result.state, result.attempts) == ("failed", 2)
    assert "ValueError: nope" in result.error


async def test_permanent_error_is_not_retried(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "pe")
    reg = TaskRegistry()

    @task("bad", registry=reg)
    async def bad(job: Job) -> None:
        raise PermanentError("invalid address")

    job_id = await client.enqueue(conn, "pe", "bad", max_attempts=10)
    async with running_worker(db_url, "pe", reg):
        result = (await client.wait(conn, [job_id], timeout=20))[job_id]
    assert (result.state, result.attempts) == ("failed", 1)
    assert "invalid address" in result.error


async def test_timeout_fails_the_attempt(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "to")
    reg = TaskRegistry()

    @task("slow", timeout=0.2, registry=reg)
    async def slow(job: Job) -> None:
        await asyncio.sleep(30)

    job_id = await client.enqueue(conn, "to", "slow", max_attempts=1)
    async with running_worker(db_url, "to", reg):
        result = (await client.wait(conn, [job_id], timeout=20))[job_id]
    assert result.state == "failed" and "timed out after 0.2s" in result.error


async def test_unknown_task_fails_once_with_its_name(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "ut")
    job_id = await client.enqueue(conn, "ut", "no.such.task", max_attempts=5)
    async with running_worker(db_url, "ut", TaskRegistry()):
        result = (await client.wait(conn, [job_id], timeout=20))[job_id]
    assert (result.state, result.attempts) == ("failed", 1)
    assert "unknown task 'no.such.task'" in result.error


async def test_worker_refuses_an_unknown_queue(db_url: str) -> None:
    from shoal.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown queue 'nowhere'"):
        async with running_worker(db_url, "nowhere", TaskRegistry()):
            pass


async def test_rescue_returns_jobs_of_a_dead_worker(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "rs")
    ids = await client.enqueue_many(conn, [NewJob("rs", "t") for _ in range(3)])
    await conn.fetch("SELECT shoal.heartbeat('dead-worker', 'rs', 'h', 1)")
    claimed = await conn.fetch("SELECT * FROM shoal.claim('rs', 'dead-worker', 2)")
    assert len(claimed) == 2
    assert await conn.fetchval("SELECT shoal.rescue(interval '1 hour')") == 0, "a fresh worker keeps its jobs"
    await conn.execute("UPDATE shoal.workers SET heartbeat_at = now() - interval '2 minutes'")
    up = await conn.fetchval("SELECT now() - pg_postmaster_start_time()")
    assert await conn.fetchval("SELECT shoal.rescue($1)", up + timedelta(seconds=5)) == 0, \
        "nobody is judged dead before the server has been up for the staleness window"
    stale = min(up, timedelta(seconds=60)) - timedelta(milliseconds=1)
    assert await conn.fetchval("SELECT shoal.rescue($1)", stale) == 2
    rows = await conn.fetch("SELECT state, attempts, worker_id, suspect FROM shoal.jobs WHERE id = ANY($1)", ids)
    assert all(r["state"] == "pending" and r["worker_id"] is None for r in rows)
    assert sorted(r["attempts"] for r in rows) == [0, 0, 0], "two jobs died together: neither is charged"
    assert sorted(r["suspect"] for r in rows) == [False, True, True], "the two run alone next"


def test_a_failing_loop_waits_twice_as_long_each_time_up_to_its_cap_and_starts_over_after_success() -> None:
    backoff = LoopBackoff(base=0.1, cap=1.0)
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.failed() == 0.1


def test_retry_delay_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        exp = min(60.0, 2.0 * 2 ** (attempt - 1))
        samples = [retry_delay(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(200)]
        assert all(exp / 2 <= s <= exp for s in samples)
        assert max(samples) - min(samples) > exp / 4, "jitter spreads retries out"
    with pytest.raises(ValueError):
        retry_delay(0)


async def test_wait_for_sees_jobs_finished_before_and_pruned(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "w")  # keep_succeeded 0: succeeded rows are deleted at once
    ids = await client.enqueue_many(conn, [NewJob("w", "shoal.noop") for _ in range(3)])
    async with running_worker(db_url, "w"):
        done = await client.wait(conn, ids, timeout=20)
    assert {r.state for r in done.values()} == {"succeeded"}
    again = await client.wait(conn, ids, timeout=5)
    assert all(r.pruned and r.state == "succeeded" for r in again.values())
    from shoal.errors import JobNotFoundError

    with pytest.raises(JobNotFoundError):
        await client.wait(conn, [ids[-1] + 1000], timeout=5)


async def test_enqueue_many_10k_then_drain(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "bulk")
    ids = await client.enqueue_many(conn, [NewJob("bulk", "shoal.noop") for _ in range(10_000)])
    async with running_worker(db_url, "bulk", concurrency=200):
        await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM shoal.jobs"), timeout=60)
    assert len(ids) == 10_000

