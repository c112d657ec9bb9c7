"""Job timeouts kept by one timer (worker/deadlines.py): asyncio.timeout's semantics without a
timer per job."""

from __future__ import annotations

import asyncio
import time
import traceback

import asyncpg

from helpers import running_worker
from shoal import client, queues
from shoal.tasks import Job, TaskRegistry, task
from shoal.worker import deadlines as dl
from shoal.worker.deadlines import Deadlines
from shoal.worker.executor import timeout_error


async def _run(deadlines: Deadlines, timeout: float, body: asyncio.Event | None = None,
               swallow: bool = False) -> str:
    """A runner's use of a deadline, as Executor.runner does it; what became of the job."""
    me = asyncio.current_task()
    assert me is not None
    deadline = deadlines.start(timeout, me)
    try:
        try:
            await (body.wait() if body is not None else asyncio.sleep(3600))
        except asyncio.CancelledError:
            if not swallow:
                raise
        return "finished"
    except asyncio.CancelledError as exc:
        if deadlines.timed_out(deadline):
            return "".join(traceback.format_exception(timeout_error(exc)))
        raise
    finally:
        deadlines.finish(deadline)


async def test_a_job_past_its_deadline_times_out_showing_where_it_was() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    result = await asyncio.create_task(_run(deadlines, 0))
    assert "TimeoutError" in result and "in _run" in result and "CancelledError" in result
    assert len(deadlines) == 0


async def test_jobs_that_end_in_time_are_left_alone_and_their_entries_do_not_pile_up() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    done = asyncio.Event()
    done.set()
    for _ in range(5 * dl._COMPACT_AT):
        assert await asyncio.create_task(_run(deadlines, 3600, done)) == "finished"
    assert len(deadlines) <= dl._COMPACT_AT + 1


async def test_a_stop_at_the_deadline_stays_a_cancellation() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    never = asyncio.Event()
    job = asyncio.create_task(_run(deadlines, 0, never))
    await asyncio.sleep(0)  # started
    job.cancel()  # a stop, besides the deadline
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    try:
        await job
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the stop was lost")


async def test_a_job_that_ignores_its_deadline_leaves_no_cancel_request_behind() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())

    async def ignoring() -> int:
        assert await _run(deadlines, 0, swallow=True) == "finished"
        me = asyncio.current_task()
        assert me is not None
        return me.cancelling()

    assert await asyncio.create_task(ignoring()) == 0


async def test_timed_out_jobs_fail_with_the_timeout_and_others_run_on(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "dl", keep_failed_seconds=3600)
    reg = TaskRegistry()

    @task("dl.stuck", timeout=0.1, registry=reg)
    async def stuck(job: Job) -> None:
        await asyncio.sleep(3600)

    @task("dl.quick", timeout=30, registry=reg)
    async def quick(job: Job) -> None:
        await asyncio.sleep(0)

    stuck_id = await client.enqueue(conn, "dl", "dl.stuck", max_attempts=1)
    quick_ids = [await client.enqueue(conn, "dl", "dl.quick") for _ in range(50)]
    async with running_worker(db_url, "dl", reg):
        results = await client.wait(conn, [stuck_id, *quick_ids], timeout=30)
    assert results[stuck_id].state == "failed" and "timed out after 0.1s" in (results[stuck_id].error or "")
    assert {results[i].state for i in quick_ids} == {"succeeded"}
    tb = await conn.fetchval("SELECT traceback FROM shoal.job_errors WHERE job_id = $1", stuck_id)
    assert "in stuck" in tb, "the traceback shows where the job was stuck"


async def test_sync_and_batch_handlers_time_out_on_the_same_deadlines(db_url: str, conn: asyncpg.Connection) -> None:
    """Handlers the runner does not await inline (a sync one, in a thread; a batch call) keep their
    timeout through the same deadlines, with the same TimeoutError."""
    await queues.declare_queue(conn, "ds", keep_failed_seconds=3600)
    reg = TaskRegistry()

    @task("ds.sync", timeout=0.1, registry=reg)
    def blocking(job: Job) -> None:
        time.sleep(0.5)

    @task("ds.batch", timeout=0.1, batch=True, batch_size=5, registry=reg)
    async def batch(jobs: list[Job]) -> None:
        await asyncio.sleep(3600)

    sync_id = await client.enqueue(conn, "ds", "ds.sync", max_attempts=1)
    batch_ids = [await client.enqueue(conn, "ds", "ds.batch", max_attempts=1) for _ in range(3)]
    async with running_worker(db_url, "ds", reg):
        results = await client.wait(conn, [sync_id, *batch_ids], timeout=30)
    for job_id in (sync_id, *batch_ids):
        assert results[job_id].state == "failed", results[job_id]
        assert "timed out after 0.1s" in (results[job_id].error or "")
