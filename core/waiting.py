"""Following jobs to the end: `wait` until they reach a final state.

A waiter LISTENs on `shoal_done`, which completions notify while a waiter is listed
(sql/014_done_gate.sql), and reads the final rows when a notification may concern it; polling
is only the safety net. Inside the caller's transaction no notification arrives: it polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg

from shoal import queries
from shoal.errors import JobNotFoundError
from shoal.jobs import Executor, JobResult


def final_result(row: Any) -> JobResult:
    """A JobResult from a row of queries.JOBS_FINAL (either driver's row)."""
    return JobResult(row["id"], row["state"], row["attempts"], row["last_error"], row["finished_at"])


def pruned_results(missing: set[int], last_id: int) -> dict[int, JobResult]:
    """Ids without a row: a pruned success if it was handed out (ids are never reused, and
    keep_succeeded = 0 deletes on success), else JobNotFoundError."""
    out = {}
    for job_id in missing:
        if job_id > last_id or job_id < 1:
            raise JobNotFoundError(f"job {job_id} does not exist")
        out[job_id] = JobResult(job_id, "succeeded", pruned=True)
    return out


async def _final_results(conn: asyncpg.Connection, ids: set[int]) -> dict[int, JobResult]:
    """Those of `ids` that are final; an unknown id raises, one pruned by retention reads as succeeded."""
    out = {r["id"]: final_result(r) for r in await conn.fetch(queries.JOBS_FINAL, list(ids))}
    missing = ids - out.keys() - {r["id"] for r in await conn.fetch(queries.JOBS_EXISTING, list(ids - out.keys()))}
    if missing:
        out.update(pruned_results(missing, await conn.fetchval(queries.JOBS_LAST_ID)))
    return out


def done_mentions(payload: str, wanted: set[int]) -> bool:
    """Whether a `shoal_done` notification may concern one of `wanted`. Payloads are
    comma-separated ids or "lo-hi" ranges (sql/004_held_claims.sql); a range can cover jobs
    that did not finish, so a True answer only means "look again"."""
    for part in payload.split(","):
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                low, high = int(lo), int(hi)
                if any(low <= job_id <= high for job_id in wanted):
                    return True
            elif part and int(part) in wanted:
                return True
        except ValueError:
            return True  # a payload we cannot read: look again rather than miss a wake-up
    return False


async def wait(db: Executor, ids: Sequence[int], *, mode: str = "all", timeout: float | None = None,
               poll_interval: float = 1.0) -> dict[int, JobResult]:
    """Wait until all (mode="all") or any (mode="first") of `ids` reach a final state.

    Wakes on the `shoal_done` notifications that completions send; polls every
    `poll_interval` as a safety net for a notification lost to a reconnect.
    """
    wanted = {int(i) for i in ids}
    if not wanted:
        return {}
    pool_conn = await db.acquire() if isinstance(db, asyncpg.Pool) else None
    conn: asyncpg.Connection = pool_conn if pool_conn is not None else db  # type: ignore[assignment]
    woken = asyncio.Event()

    def on_done(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        if done_mentions(payload, wanted):
            woken.set()

    listed: int | None = None
    await conn.add_listener("shoal_done", on_done)
    try:
        async with asyncio.timeout(timeout):
            if not conn.is_in_transaction():
                listed = await conn.fetchval(queries.WAIT_BEGIN)
                await conn.execute(queries.DONE_BARRIER)  # waits for completions in flight: within the timeout
            results: dict[int, JobResult] = {}
            while True:
                woken.clear()
                results.update(await _final_results(conn, wanted - results.keys()))
                if (mode == "first" and results) or results.keys() >= wanted:
                    return results
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), poll_interval)
    finally:
        with contextlib.suppress(Exception):
            if listed is not None:
                await conn.execute(queries.WAIT_END, listed)
            await conn.remove_listener("shoal_done", on_done)
        if pool_conn is not None:
            await db.release(pool_conn)  # type: ignore[union-attr,attr-defined]
