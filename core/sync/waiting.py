"""Following jobs from synchronous code: `wait` for final states, `cancel`, `retry`, `get_job`.

The semantics of shoal.waiting and shoal.manage on a psycopg connection: LISTEN on `shoal_done`
(which completions notify while a waiter is listed: sql/014_done_gate.sql) and read the final
rows when a notification may concern the waiter; polling every `poll_interval` is the safety net.
A connection in a transaction cannot receive notifications until it ends, so there `wait` polls
only. An id handed out whose row is gone was a succeeded job pruned by retention; an id never
handed out raises JobNotFoundError.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from shoal import queries
from shoal.jobs import JobResult
from shoal.sync._db import Connection, fetch, in_callers_transaction
from shoal.waiting import done_mentions, final_result, pruned_results


def _final_results(conn: Connection, ids: set[int]) -> dict[int, JobResult]:
    """Those of `ids` that are final; an unknown id raises, one pruned by retention reads as succeeded."""
    out = {r["id"]: final_result(r) for r in fetch(conn, queries.JOBS_FINAL, list(ids))}
    rest = ids - out.keys()
    missing = rest - {r["id"] for r in fetch(conn, queries.JOBS_EXISTING, list(rest))} if rest else set()
    if missing:
        out.update(pruned_results(missing, fetch(conn, queries.JOBS_LAST_ID)[0]["coalesce"]))
    return out


def wait(conn: Connection, ids: Sequence[int], *, mode: str = "all", timeout: float | None = None,
         poll_interval: float = 1.0) -> dict[int, JobResult]:
    """Wait until all (mode="all") or any (mode="first") of `ids` reach a final state; TimeoutError
    after `timeout` seconds. Listens for completions on an autocommit connection, else polls."""
    wanted = {int(i) for i in ids}
    if not wanted:
        return {}
    deadline = None if timeout is None else time.monotonic() + timeout
    listen = not in_callers_transaction(conn)
    listed = None
    if listen:
        conn.execute("LISTEN shoal_done")
    try:
        if listen:
            listed = fetch(conn, queries.WAIT_BEGIN)[0]["wait_begin"]
            fetch(conn, queries.DONE_BARRIER)
        results: dict[int, JobResult] = {}
        while True:
            results.update(_final_results(conn, wanted - results.keys()))
            if (mode == "first" and results) or results.keys() >= wanted:
                return results
            pause = poll_interval
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    raise TimeoutError(f"jobs {sorted(wanted - results.keys())} not final within {timeout}s")
            if not listen:
                time.sleep(pause)
                continue
            for note in conn.notifies(timeout=pause):
                if done_mentions(note.payload, wanted):
                    break
    finally:
        if listen:
            with contextlib.suppress(psycopg.Error):
                if listed is not None:
                    fetch(conn, queries.WAIT_END, listed)
                conn.execute("UNLISTEN shoal_done")


def cancel(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    """Cancel jobs: pending ones at once; running ones are interrupted by their worker."""
    return {r["id"]: ("cancelling" if r["state"] == "running" else r["state"])
            for r in fetch(conn, queries.JOBS_CANCEL, list(ids))}


def retry(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Run failed or cancelled jobs again, from attempt zero."""
    return [r["id"] for r in fetch(conn, queries.JOBS_RETRY, list(ids))]


def get_job(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """The job's row as a dict, or None if there is none (never existed, or pruned by retention)."""
    rows = fetch(conn, queries.JOB_GET, job_id)
    return rows[0] if rows else None
