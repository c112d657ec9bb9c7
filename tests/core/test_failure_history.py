"""Failure history (sql/006_failure_history.sql): every failed attempt keeps its error and a bounded
traceback, `shoal jobs show` prints them, and the history goes when its job goes, without slowing
the deletion of succeeded jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

import asyncpg
import pytest

from helpers import TESTS_DIR, running_worker
from shoal import client, failures, queries, queues
from shoal.client import NewJob
from shoal.tasks import Job, TaskRegistry, task
from shoal.worker.known_types import id_array

WARM_UP = 1500  # no-op jobs after which a worker knows its jobs are short and claims held
FAST_RETRY = {"backoff_base": 0.01, "backoff_cap": 0.05}


async def shoal(db_url: str, *args: str) -> tuple[int, str, str]:
    """The real CLI, as a user runs it."""
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": str(TESTS_DIR)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal.cli", "--database-url", db_url, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def parse_payload(text: str) -> Any:
    return json.loads(text)


def inner_parse(job: Job) -> None:
    parse_payload(job.payload["text"])  # raises json.JSONDecodeError from inside the stdlib


def failing_registry(seen_held: list[bool] | None = None, worker: list[Any] | None = None) -> TaskRegistry:
    reg = TaskRegistry()

    @task("noop", registry=reg)
    async def noop(job: Job) -> None:
        return None

    @task("parse", registry=reg)
    async def parse(job: Job) -> None:
        if seen_held is not None and worker:
            seen_held.append(job.id in worker[0].batch_of)
        inner_parse(job)

    @task("shout", registry=reg)
    async def shout(job: Job) -> None:
        raise ValueError("x" * 100_000 + "\nsecond line")

    def ping(n: int) -> None:
        if n == 0:
            raise RuntimeError("bottom of the recursion")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    @task("deep", registry=reg)
    async def deep(job: Job) -> None:
        ping(400)  # alternating frames: Python cannot fold them into "[previous line repeated]"

    return reg


async def history(conn: asyncpg.Connection, job_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(queries.JOB_ERRORS, job_id)


async def check_shown(db_url: str, job_id: int, attempts: int) -> None:
    code, out, err = await shoal(db_url, "jobs", "show", str(job_id))
    assert code == 0, err
    assert f"job {job_id}" in out and "state:" in out and '"text": "{oops"' in out, out
    for n in range(1, attempts + 1):
        assert f"error of attempt {n} at" in out
    assert out.count("JSONDecodeError") >= attempts and out.count("in inner_parse") == attempts, out
    code, out, err = await shoal(db_url, "jobs", "show", str(job_id), "--json")
    shown = json.loads(out)
    assert shown["payload"] == {"text": "{oops"} and shown["state"] == "failed"
    assert [e["attempt"] for e in shown["errors"]] == list(range(1, attempts + 1)), "oldest first"
    assert all("inner_parse" in e["traceback"] and e["error"].startswith("json.decoder.JSONDecodeError")
               for e in shown["errors"])


# -- the worker writes it, both paths -----------------------------------------------------------
async def test_leased_failures_keep_each_attempts_traceback(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "fl")
    job_id = await client.enqueue(conn, "fl", "parse", {"text": "{oops"}, max_attempts=3)
    async with running_worker(db_url, "fl", failing_registry(), held_claims=False, **FAST_RETRY):
        res = await client.wait(conn, [job_id], timeout=30)
    assert res[job_id].state == "failed" and res[job_id].attempts == 3
    rows = await history(conn, job_id)
    assert [r["attempt"] for r in rows] == [1, 2, 3] and all(r["worker_id"] for r in rows)
    await check_shown(db_url, job_id, 3)


async def test_held_failures_keep_each_attempts_traceback(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "fh")
    seen_held: list[bool] = []
    worker: list[Any] = []
    await client.enqueue_many(conn, [NewJob("fh", "noop", priority=1) for _ in range(WARM_UP)])
    ids = await client.enqueue_many(conn, [NewJob("fh", "parse", {"text": "{oops"}, max_attempts=2)
                                           for _ in range(20)])
    async with running_worker(db_url, "fh", failing_registry(seen_held, worker), concurrency=20,
                              **FAST_RETRY) as w:
        worker.append(w)
        res = await client.wait(conn, ids, timeout=60)
    assert {r.state for r in res.values()} == {"failed"}
    # Held once the worker measured its jobs short (a run slowed by a loaded machine may lift the
    # average and go leased, hence not all); every run left its history either way.
    assert len(seen_held) == 40 and sum(seen_held) >= 20, seen_held
    for job_id in ids:
        assert [r["attempt"] for r in await history(conn, job_id)] == [1, 2]
    await check_shown(db_url, ids[0], 2)


# -- bounded --------------------------------------------------------------------------------------
async def test_huge_errors_and_tracebacks_are_cut_in_the_middle(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "fb")
    shout = await client.enqueue(conn, "fb", "shout", max_attempts=1)
    deep = await client.enqueue(conn, "fb", "deep", max_attempts=1)
    async with running_worker(db_url, "fb", failing_registry(), held_claims=False):
        await client.wait(conn, [shout, deep], timeout=30)
    (loud,), (rec,) = await history(conn, shout), await history(conn, deep)
    assert len(loud["error"]) <= failures.ERROR_LIMIT and "characters cut" in loud["error"]
    assert loud["error"].startswith("ValueError: xxx") and loud["error"].endswith("second line")
    for tb in (loud["traceback"], rec["traceback"]):
        assert len(tb) <= failures.TRACEBACK_LIMIT and "characters cut" in tb
        assert tb.startswith("Traceback (most recent call last)")
    assert "in ping" in rec["traceback"] and rec["traceback"].rstrip().endswith("bottom of the recursion")

    # `jobs list`: the first line only, and a mark where it was cut.
    code, out, _ = await shoal(db_url, "jobs", "list", "--queue", "fb")
    cells = {line.split("\t")[0]: line.split("\t")[-1] for line in out.splitlines()[1:]}
    assert code == 0 and cells[str(shout)].endswith("…") and len(cells[str(shout)]) == 80
    assert cells[str(deep)] == "RuntimeError: bottom of the recursion", "short errors are shown whole"
    assert failures.summary("one\ntwo") == "one…"


async def test_sql_bounds_writers_that_do_not(conn: asyncpg.Connection) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(50_000))
    for limit in (2048, 8192):
        assert await conn.fetchval("SELECT shoal.clip($1, $2)", text, limit) == failures.clip(text, limit)
    assert await conn.fetchval("SELECT shoal.clip('short', 2048)") == "short"


# -- logs -----------------------------------------------------------------------------------------
async def test_failures_log_the_traceback_at_debug_and_no_retry_delay_when_final(
        db_url: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="shoal.worker")
    await queues.declare_queue(conn, "fg")
    job_id = await client.enqueue(conn, "fg", "parse", {"text": "{oops"}, max_attempts=2)
    async with running_worker(db_url, "fg", failing_registry(), held_claims=False, **FAST_RETRY):
        await client.wait(conn, [job_id], timeout=30)
    mine = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    retried = [r for r in mine if r.getMessage() == "job failed, will retry"]
    final = [r for r in mine if r.getMessage() == "job failed"]
    tracebacks = [r for r in mine if r.levelno == logging.DEBUG and hasattr(r, "traceback")]
    assert len(retried) == 1 and getattr(retried[0], "retry_in", None) is not None
    assert len(final) == 1 and not hasattr(final[0], "retry_in"), "a final failure has no retry delay"
    assert len(tracebacks) == 2 and all("inner_parse" in r.traceback for r in tracebacks)  # type: ignore[attr-defined]


# -- the SQL contract -----------------------------------------------------------------------------
async def _running(conn: asyncpg.Connection, queue: str, n: int, worker: str = "w1", **opts: Any) -> list[int]:
    await queues.declare_queue(conn, queue, **opts)
    ids = await client.enqueue_many(conn, [NewJob(queue, "t") for _ in range(n)])
    await conn.execute("UPDATE shoal.jobs SET state = 'running', attempts = attempts + 1, worker_id = $2, "
                       "started_at = now() WHERE id = ANY($1)", ids, worker)  # as a leased claim leaves them
    return ids


async def test_previous_workers_calls_still_record_history(db_url: str, conn: asyncpg.Connection) -> None:
    """A rolling upgrade: workers of the previous version call the old signatures."""
    await conn.execute("INSERT INTO shoal.workers (id, queue) VALUES ('w1', 'old')")
    a, b, c = await _running(conn, "old", 3)
    await conn.execute(queries.RECORD, "w1", "old", [], [a], ["boom a"], [0.0], [])
    await conn.execute("SELECT shoal.complete('w1', '{}', $1, '{boom b}', '{NULL}', '{}')", [b])
    await conn.execute(queries.RECORD_TRACED, "w1", "old", "{}", [c], ["boom c"], [None], [], ["Traceback c"])
    got = {r["job_id"]: (r["attempt"], r["error"], r["traceback"]) for r in
           await conn.fetch("SELECT * FROM shoal.job_errors")}
    assert got == {a: (1, "boom a", None), b: (1, "boom b", None), c: (1, "boom c", "Traceback c")}

    await queues.declare_queue(conn, "oldh")
    ids = await client.enqueue_many(conn, [NewJob("oldh", "t") for _ in range(2)])
    for query, extra in ((queries.FINISH_HELD, ()), (queries.FINISH_HELD_TRACED, (["Traceback held"],))):
        async with conn.transaction():
            (row,) = await conn.fetch(queries.CLAIM_HELD, "oldh", 1, True)
            await conn.execute(query, "w2", "oldh", 1, None, [], [], [row["id"]], ["held boom"], [0.0], [], *extra)
    rows = await conn.fetch("SELECT job_id, worker_id, traceback FROM shoal.job_errors WHERE job_id = ANY($1) "
                            "ORDER BY job_id", ids)
    assert [(r["job_id"], r["worker_id"], r["traceback"]) for r in rows] == [
        (ids[0], "w2", None), (ids[1], "w2", "Traceback held")]


async def test_history_goes_with_its_job(db_url: str, conn: asyncpg.Connection) -> None:
    # A success deleted at once takes the history of its failed attempts along.
    job, clean = await _running(conn, "gone", 2)
    await conn.execute(queries.RECORD_TRACED, "w1", "gone", "{}", [job], ["boom"], [0.0], [], ["tb"])
    await conn.execute("UPDATE shoal.jobs SET state = 'running', attempts = 2, worker_id = 'w1' WHERE id = $1", job)
    await conn.execute(queries.RECORD_TRACED, "w1", "gone", id_array([clean, job]), [], [], [], [], [])
    assert await history(conn, job) == [] and await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 0
    # Retention prunes it with its failed job.
    (old,) = await _running(conn, "kept", 1, keep_failed_seconds=1)
    await conn.execute(queries.RECORD_TRACED, "w1", "kept", "{}", [old], ["boom"], [None], [], ["tb"])
    await conn.execute("UPDATE shoal.jobs SET finished_at = now() - interval '1 hour' WHERE id = $1", old)
    assert len(await history(conn, old)) == 1
    assert await conn.fetchval(queries.PRUNE, 100) == 1 and await history(conn, old) == []
    # Deleting a queue with its jobs deletes their history.
    (last,) = await _running(conn, "dropped", 1)
    await conn.execute(queries.RECORD_TRACED, "w1", "dropped", "{}", [last], ["boom"], [None], [], [None])
    await queues.delete_queue(conn, "dropped", delete_jobs=True)
    assert await conn.fetchval("SELECT count(*) FROM shoal.job_errors") == 0


async def test_note_errors_for_rescue_paths(conn: asyncpg.Connection) -> None:
    """The helper rescue paths call after counting a dead worker's attempt and setting last_error."""
    a, b = await _running(conn, "rs", 2)
    await conn.execute("UPDATE shoal.jobs SET state = 'pending', last_error = 'worker w1 stopped' "
                       "WHERE id = ANY($1)", [a, b])
    assert await conn.fetchval("SELECT shoal.note_errors($1)", [a, 999_999]) == 1, "unknown ids are skipped"
    assert await conn.fetchval("SELECT shoal.note_errors($1, $2, $3, $4)", [b], ["x" * 5000], ["w1"], [7]) == 1
    rows = {r["job_id"]: r for r in await conn.fetch("SELECT * FROM shoal.job_errors")}
    assert (rows[a]["attempt"], rows[a]["error"], rows[a]["worker_id"]) == (1, "worker w1 stopped", None)
    assert (rows[b]["attempt"], rows[b]["worker_id"]) == (7, "w1") and len(rows[b]["error"]) <= failures.ERROR_LIMIT


async def test_show_unknown_job_is_one_line_and_exit_1(db_url: str) -> None:
    code, out, err = await shoal(db_url, "jobs", "show", "424242")
    assert code == 1 and out == "" and err.count("\n") == 1 and "424242" in err
