"""Batch enqueue through COPY (producer._enqueue_copy, sql/003_enqueue_copy.sql) against a real PostgreSQL.

Batches of `COPY_MIN_BATCH` jobs or more without unique keys take the COPY path; every test here
proves that it did (`copy_only`), then that the rows are what the INSERT path would have written.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from helpers import eventually, running_worker
from shoal import client, producer, queries, queues
from shoal.client import Client, NewJob
from shoal.errors import UnknownQueueError, ValidationError
from shoal.tasks import Job, TaskRegistry, task

BIG = max(client.COPY_MIN_BATCH, 1_200)  # above the threshold, and several COPY chunks


@pytest.fixture
def copy_only(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fail any batch that takes the INSERT path; returns the sizes of the batches that took COPY."""
    sizes: list[int] = []
    real = producer._enqueue_copy

    async def insert(db: Any, batch: Any) -> list[int]:
        raise AssertionError(f"a batch of {len(batch.rows)} jobs took the INSERT path")

    async def copy(db: Any, jobs: list[NewJob]) -> list[int]:
        sizes.append(len(jobs))
        return await real(db, jobs)

    monkeypatch.setattr(producer, "_enqueue_insert", insert)
    monkeypatch.setattr(producer, "_enqueue_copy", copy)
    return sizes


async def payloads_by_id(conn: asyncpg.Connection) -> dict[int, Any]:
    return {r["id"]: json.loads(r["payload"]) for r in await conn.fetch("SELECT id, payload FROM shoal.jobs")}


async def test_ids_come_back_in_input_order_and_match_the_rows(conn: asyncpg.Connection, copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "big")
    ids = await client.enqueue_many(conn, [NewJob("big", "t", {"i": i, "s": "é\\\t\n\"'"}) for i in range(BIG)])
    assert copy_only == [BIG]
    assert len(ids) == BIG and ids == sorted(ids) and len(set(ids)) == BIG
    stored = await payloads_by_id(conn)
    assert [stored[job_id] for job_id in ids] == [{"i": i, "s": "é\\\t\n\"'"} for i in range(BIG)]
    # Ids are the identity sequence's: the next INSERT-path job continues after them.
    one = await conn.fetchval("SELECT shoal.enqueue('big', 't')")
    assert one > ids[-1]


async def test_defaults_and_explicit_values_are_applied(conn: asyncpg.Connection, copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "a", max_attempts=7)
    await queues.declare_queue(conn, "b")  # the default max_attempts, 5
    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    jobs = []
    for i in range(BIG):
        kind = i % 5
        jobs.append(NewJob(
            "a" if i % 2 else "b", "send.mail" if i % 3 else "t", None if kind == 0 else {"i": i},
            priority=-32768 if kind == 1 else (32767 if kind == 2 else 0),
            run_at=at if kind == 3 else None,
            delay=3600 if kind == 4 and i % 2 else None,
            max_attempts=i % 9 + 1 if kind == 2 else None))
    before = datetime.now(UTC)
    ids = await client.enqueue_many(conn, jobs)
    assert copy_only == [BIG]
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM shoal.jobs")}
    for job_id, job in zip(ids, jobs, strict=True):
        row = rows[job_id]
        assert (row["queue"], row["task"]) == (job.queue, job.task)
        assert json.loads(row["payload"]) == (job.payload if job.payload is not None else {})
        assert row["priority"] == job.priority
        assert row["max_attempts"] == (job.max_attempts or (7 if job.queue == "a" else 5))
        if job.run_at is not None:
            assert row["run_at"] == at
        elif job.delay is not None:
            assert before + timedelta(seconds=3599) < row["run_at"] < datetime.now(UTC) + timedelta(seconds=3601)
        else:
            assert row["run_at"] == row["created_at"], "no run_at: the transaction's now(), as INSERT's default"
        assert (row["state"], row["attempts"], row["cancel_requested"]) == ("pending", 0, False)
        assert row["unique_key"] is None and row["worker_id"] is None and row["finished_at"] is None


async def test_unknown_queue_refuses_the_whole_batch(conn: asyncpg.Connection, copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "known")
    jobs = [NewJob("known", "t", {"i": i}) for i in range(BIG)]
    jobs[BIG - 1] = NewJob("ghost", "t")
    with pytest.raises(UnknownQueueError, match="'ghost'") as err:
        await client.enqueue_many(conn, jobs)
    assert err.value.queue == "ghost" and "shoal queue create ghost" in str(err.value)
    assert copy_only == [BIG]
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
    assert not conn.is_in_transaction()


@pytest.mark.parametrize("in_transaction", [False, True], ids=["own-transaction", "caller-transaction"])
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": {"x": float("nan")}}, "payload"),
        ({"delay": -1}, "delay"),
        ({"task": ""}, "task"),
        ({"queue": "Bad Name"}, "queue"),
        ({"queue": ["unhashable"]}, "queue"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2**31}, "max_attempts"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at"),
        ({"priority": 10**6}, "priority"),
        ({"priority": "high"}, "priority"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
async def test_a_bad_job_late_in_the_batch_is_named_and_nothing_is_added(
        conn: asyncpg.Connection, copy_only: list[int], bad: dict[str, Any], field: str,
        in_transaction: bool) -> None:
    await queues.declare_queue(conn, "v")
    at = BIG - 7  # in the last COPY chunk: the rows before it were already sent
    jobs = [NewJob("v", "t", {"i": i}) for i in range(BIG)]
    jobs[at] = NewJob(**{"queue": "v", "task": "t", **bad})
    # Then with an unknown queue too: the bad job is still the error reported, as on the INSERT path.
    for batch in (jobs, [*jobs, NewJob("ghost", "t")]):
        if in_transaction:
            async with conn.transaction():
                with pytest.raises(ValidationError) as err:
                    await client.enqueue_many(conn, batch)
                # A ValidationError leaves the caller's transaction usable, as on the INSERT path.
                assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
        else:
            with pytest.raises(ValidationError) as err:
                await client.enqueue_many(conn, batch)
        assert err.value.field == f"jobs[{at}].{field}"
        assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
        assert not conn.is_in_transaction()


async def test_rolls_back_and_commits_with_the_callers_transaction(conn: asyncpg.Connection,
                                                                   copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "tx")
    await conn.execute("CREATE TABLE orders (id int)")
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (1)")
            await client.enqueue_many(conn, [NewJob("tx", "ship", {"i": i}) for i in range(BIG)])
            assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == BIG
            raise RuntimeError("application error")
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
    assert await conn.fetchval("SELECT count(*) FROM orders") == 0
    async with conn.transaction():
        await conn.execute("INSERT INTO orders VALUES (2)")
        ids = await client.enqueue_many(conn, [NewJob("tx", "ship", {"i": i}) for i in range(BIG)])
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE id = ANY($1)", ids) == BIG
    assert copy_only == [BIG, BIG]


async def test_a_manually_begun_transaction_works_too(conn: asyncpg.Connection, copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "tx")
    await conn.execute("BEGIN")
    await client.enqueue_many(conn, [NewJob("tx", "t") for _ in range(BIG)])
    await conn.execute("ROLLBACK")
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
    assert copy_only == [BIG]


async def test_wakes_listeners_once_per_queue_at_commit(db_url: str, conn: asyncpg.Connection,
                                                        copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "n1")
    await queues.declare_queue(conn, "n2")
    listener = await asyncpg.connect(db_url)
    heard: list[str] = []
    await listener.add_listener("shoal_jobs", lambda _c, _pid, _channel, payload: heard.append(payload))
    for queue in ("n1", "n2"):  # an idle worker on each (sql/015_waiter_locks.sql)
        await listener.fetchval(queries.WAIT_FOR_JOBS, queue)
    try:
        async with conn.transaction():
            await client.enqueue_many(conn, [NewJob("n1" if i % 2 else "n2", "t") for i in range(BIG)])
            await asyncio.sleep(0.3)
            assert heard == [], "NOTIFY is delivered at commit"
        await eventually(lambda: asyncio.sleep(0, len(heard) >= 2), timeout=5)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await client.enqueue_many(conn, [NewJob("n1", "t") for _ in range(BIG)])
                raise RuntimeError("rolled back")
        await asyncio.sleep(0.3)
        assert sorted(heard) == ["n1", "n2"], "one wake-up per queue, none for a rolled-back batch"
    finally:
        await listener.close()


async def test_an_idle_worker_is_woken_by_a_large_batch(db_url: str, conn: asyncpg.Connection,
                                                        copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "wake")
    ran: list[int] = []
    reg = TaskRegistry()

    @task("rec", registry=reg)
    async def rec(job: Job) -> None:
        ran.append(job.payload["i"])

    # Polling every 60 s: only the NOTIFY can make the worker look in time.
    async with running_worker(db_url, "wake", reg, poll_interval=60, concurrency=50):
        await asyncio.sleep(0.5)  # let it find the queue empty and go to sleep
        await client.enqueue_many(conn, [NewJob("wake", "rec", {"i": i}) for i in range(BIG)])
        await eventually(lambda: asyncio.sleep(0, len(ran) >= BIG), timeout=30)
    assert sorted(ran) == list(range(BIG))


async def test_concurrent_batches_get_disjoint_ids(db_url: str, conn: asyncpg.Connection,
                                                   copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "cc")
    others = [await asyncpg.connect(db_url) for _ in range(2)]
    try:
        async def add(conn_no: int) -> list[int]:
            ids: list[int] = []
            for rnd in range(3):
                ids += await client.enqueue_many(
                    others[conn_no], [NewJob("cc", "t", {"c": conn_no, "r": rnd, "i": i}) for i in range(BIG)])
            return ids

        a, b = await asyncio.gather(add(0), add(1))
    finally:
        for c in others:
            await c.close()
    assert not set(a) & set(b) and len(set(a)) == len(set(b)) == 3 * BIG
    assert a == sorted(a) and b == sorted(b)
    stored = await payloads_by_id(conn)
    assert len(stored) == 6 * BIG
    for conn_no, ids in enumerate((a, b)):
        assert [stored[job_id] for job_id in ids] == [{"c": conn_no, "r": r, "i": i} for r in range(3) for i in range(BIG)]


async def test_a_pool_uses_one_connection_for_the_batch(db_url: str, conn: asyncpg.Connection,
                                                        copy_only: list[int]) -> None:
    await queues.declare_queue(conn, "pool")
    async with await Client.connect(db_url, min_size=1, max_size=3) as shoal_client:
        ids = await shoal_client.enqueue_many(NewJob("pool", "t", {"i": i}) for i in range(BIG))  # any iterable
        with pytest.raises(UnknownQueueError):
            await shoal_client.enqueue_many([NewJob("nope", "t")] * BIG)
    stored = await payloads_by_id(conn)
    assert [stored[job_id] for job_id in ids] == [{"i": i} for i in range(BIG)]
    assert copy_only == [BIG, BIG]


async def test_small_batches_and_unique_keys_keep_the_insert_path(conn: asyncpg.Connection,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await queues.declare_queue(conn, "u")
    paths: list[str] = []
    real_insert, real_copy = producer._enqueue_insert, producer._enqueue_copy

    async def insert(db: Any, batch: Any) -> list[int]:
        paths.append("insert")
        return await real_insert(db, batch)

    async def copy(db: Any, jobs: Any) -> list[int]:
        paths.append("copy")
        return await real_copy(db, jobs)

    monkeypatch.setattr(producer, "_enqueue_insert", insert)
    monkeypatch.setattr(producer, "_enqueue_copy", copy)
    n = client.COPY_MIN_BATCH
    await client.enqueue(conn, "u", "t")
    await client.enqueue_many(conn, [NewJob("u", "t")] * (n - 1))
    await client.enqueue_many(conn, [NewJob("u", "t")] * n)
    unique = [NewJob("u", "t", {"i": i}, unique_key=f"k{i % 10}") for i in range(n)]
    ids = await client.enqueue_many(conn, unique)
    assert paths == ["insert", "insert", "copy", "insert"]
    assert len(set(ids)) == 10, "unique keys still deduplicate in a large batch"
    assert await client.enqueue_many(conn, []) == []
