"""shoal.sync (psycopg 3) against the async producer (asyncpg): the same inputs give the same jobs,
the same errors and the same trace context, on both the INSERT and the COPY paths."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from producing import QUEUE, count

from helpers import running_worker
from shoal import client, sync, tracing
from shoal.errors import JobNotFoundError, UnknownQueueError, ValidationError
from shoal.jobs import NewJob
from shoal.tasks import Job, TaskRegistry, task

BIG = max(sync.COPY_MIN_BATCH, 1_200)
# (id, NewJob fields beyond queue "q" and task "t"): invalid jobs, each refused with a typed error.
BAD: list[tuple[str, dict[str, Any]]] = [
    ("queue-empty", {"queue": ""}), ("queue-upper", {"queue": "Q"}), ("queue-none", {"queue": None}),
    ("unknown-queue", {"queue": "ghost"}), ("task-space", {"task": "a b"}), ("task-digit", {"task": "1a"}),
    ("priority-bool", {"priority": True}), ("priority-high", {"priority": 40000}),
    ("max-attempts-0", {"max_attempts": 0}), ("unique-key-empty", {"unique_key": ""}),
    ("unique-key-nul", {"unique_key": "a\x00b"}), ("run-at-naive", {"run_at": datetime(2030, 1, 1)}),
    ("run-at-and-delay", {"run_at": datetime.now(UTC), "delay": 5}), ("delay-negative", {"delay": -1}),
    ("delay-inf", {"delay": float("inf")}), ("payload-nul", {"payload": {"a": "x\x00y"}}),
    ("payload-surrogate", {"payload": "\ud800"}), ("payload-nan", {"payload": float("nan")}),
    ("payload-object", {"payload": object()}),
]
# Where the bad job sits: alone, second of two (INSERT), late in a COPY batch (own transaction or the caller's).
SHAPES = ["single", "pair", "copy", "copy-in-transaction"]


def job(fields: dict[str, Any], n: int = 0) -> NewJob:
    return NewJob(**{"queue": QUEUE, "task": "t", "payload": {"n": n}, **fields})


def batch(shape: str, bad: NewJob) -> list[NewJob]:
    if shape == "single":
        return [bad]
    if shape == "pair":
        return [job({}), bad]
    jobs = [job({}, n) for n in range(BIG)]
    jobs[BIG - 7] = bad
    return jobs


def outcome(exc: BaseException) -> tuple[str, str | None, str]:
    return type(exc).__name__, getattr(exc, "field", None), str(exc)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("name", "fields"), BAD, ids=[b[0] for b in BAD])
async def test_the_same_bad_input_gets_the_same_error(conn: asyncpg.Connection, pg: psycopg.Connection[Any],
                                                      pg_tx: psycopg.Connection[Any], shape: str, name: str,
                                                      fields: dict[str, Any]) -> None:
    jobs = batch(shape, job(fields))
    with pytest.raises((ValidationError, UnknownQueueError)) as async_err:
        if shape == "copy-in-transaction":
            async with conn.transaction():
                await client.enqueue_many(conn, jobs)
        else:
            await client.enqueue_many(conn, jobs)
    with pytest.raises((ValidationError, UnknownQueueError)) as sync_err:
        sync.enqueue_many(pg_tx if shape == "copy-in-transaction" else pg, jobs)
    assert outcome(sync_err.value) == outcome(async_err.value)
    if shape == "copy-in-transaction" and name != "unknown-queue":
        assert count(pg_tx) == 0  # a ValidationError leaves the caller's transaction usable
    pg_tx.rollback()
    assert count(pg) == 0 and pg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_single_job_error_names_the_field_alone(pg: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValidationError) as err:
        sync.enqueue(pg, QUEUE, "t", priority=True)  # type: ignore[arg-type]
    assert err.value.field == "priority"
    with pytest.raises(UnknownQueueError, match="'ghost'"):
        sync.enqueue(pg, "ghost", "t")


ROW = "queue, task, payload::text, priority, max_attempts, unique_key, trace_context, run_at > now() AS later"


@pytest.mark.parametrize("size", [3, BIG], ids=["insert", "copy"])
async def test_async_and_sync_store_the_same_rows(conn: asyncpg.Connection, pg: psycopg.Connection[Any],
                                                  size: int) -> None:
    jobs = [NewJob(QUEUE if i % 2 else "other", f"t{i % 3}", {"i": i, "s": "é"}, priority=i % 5 - 2,
                   max_attempts=None if i % 4 else 3, delay=60 if i % 7 == 0 else None) for i in range(size)]
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(parent)):
        stored = tracing.current_context()
        async_ids = await client.enqueue_many(conn, jobs)
        sync_ids = sync.enqueue_many(pg, jobs)
    assert stored and len(set(async_ids + sync_ids)) == 2 * size
    rows = {tuple(r) for r in await conn.fetch(f"SELECT id, {ROW} FROM shoal.jobs")}  # noqa: S608
    by_id = {r[0]: r[1:] for r in rows}
    assert [by_id[i] for i in sync_ids] == [by_id[i] for i in async_ids]
    assert {r[6] for r in by_id.values()} == {stored}
    assert by_id[sync_ids[2]][4] == 7  # the queue's default max_attempts ("other")


def test_jobs_commit_and_roll_back_with_the_callers_transaction(pg: psycopg.Connection[Any],
                                                                pg_tx: psycopg.Connection[Any]) -> None:
    for size in (1, BIG):
        sync.enqueue_many(pg_tx, [job({}, n) for n in range(size)])
        assert count(pg) == 0  # not committed yet
        pg_tx.rollback()
        assert count(pg) == 0
        ids = sync.enqueue_many(pg_tx, [job({}, n) for n in range(size)])
        pg_tx.commit()
        assert count(pg) == size and len(ids) == size
        pg.execute("DELETE FROM shoal.jobs")
    with pg.transaction():  # an explicit transaction on an autocommit connection
        sync.enqueue_many(pg, [job({}, n) for n in range(BIG)])
        sync.enqueue(pg, QUEUE, "t")
    assert count(pg) == BIG + 1


def test_unique_keys_return_the_live_job(pg: psycopg.Connection[Any]) -> None:
    first = sync.enqueue(pg, QUEUE, "t", unique_key="k")
    assert sync.enqueue(pg, QUEUE, "t", unique_key="k") == first
    assert count(pg) == 1


def test_wait_for_reads_final_states_pruned_and_unknown_jobs(qdb: str, pg: psycopg.Connection[Any]) -> None:
    with sync.Client(qdb, max_size=2) as c:
        a, b, gone = c.enqueue_many([job({}), job({}), job({})])
        assert c.cancel([a]) == {a: "cancelled"}
        result = c.wait_for(a, timeout=5)
        assert (result.state, result.pruned) == ("cancelled", False)
        pg.execute("DELETE FROM shoal.jobs WHERE id = %s", (gone,))  # as retention does with keep_succeeded 0
        assert c.wait_for(gone, timeout=5).state == "succeeded" and c.wait_for(gone).pruned
        assert c.wait_for_first([b, a], timeout=5).id == a
        with pytest.raises(TimeoutError):
            c.wait_for(b, timeout=0.3)
        with pytest.raises(JobNotFoundError):
            c.wait_for(gone + 1000, timeout=1)
        assert (c.get_job(b) or {})["payload"] == {"n": 0}
        assert c.retry([a]) == [a]


async def test_a_waiter_is_woken_when_a_worker_finishes_the_job(qdb: str) -> None:
    reg = TaskRegistry()

    @task("slow", registry=reg)
    async def slow(j: Job) -> None:
        await asyncio.sleep(0.3)

    with sync.Client.connect(qdb) as c:
        ids = c.enqueue_many([NewJob(QUEUE, "slow") for _ in range(3)])
        async with running_worker(qdb, QUEUE, reg, poll_interval=5.0):
            results = await asyncio.wait_for(asyncio.to_thread(c.wait_for_all, ids, 20), 25)
        assert {r.state for r in results.values()} == {"succeeded"}
        # In a transaction the waiter cannot hear notifications: it polls, and still sees the outcome.
        with psycopg.connect(qdb) as conn:
            assert sync.wait(conn, ids, timeout=5, poll_interval=0.1)[ids[0]].state == "succeeded"


def test_delay_and_run_at_are_kept(pg: psycopg.Connection[Any]) -> None:
    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    i = sync.enqueue(pg, QUEUE, "t", run_at=at)
    d = sync.enqueue(pg, QUEUE, "t", delay=timedelta(hours=1))
    copied = sync.enqueue_many(pg, [NewJob(QUEUE, "t", run_at=at) for _ in range(BIG)])
    assert (sync.get_job(pg, i) or {})["run_at"] == at == (sync.get_job(pg, copied[-1]) or {})["run_at"]
    assert (sync.get_job(pg, d) or {})["run_at"] > datetime.now(UTC) + timedelta(minutes=59)
