"""Acting on jobs already enqueued: cancel, retry, and look one up with its failure history.

What an operator does by hand (`shoal jobs`) and an application through `Client`; each is one
statement of shoal.queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal import queries
from shoal.jobs import Executor


async def cancel(db: Executor, ids: Sequence[int]) -> dict[int, str]:
    """Cancel jobs: pending ones at once; running ones are interrupted by their worker."""
    rows = await db.fetch(queries.JOBS_CANCEL, list(ids))
    return {r["id"]: ("cancelling" if r["state"] == "running" else r["state"]) for r in rows}


async def retry(db: Executor, ids: Sequence[int]) -> list[int]:
    """Run failed or cancelled jobs again, from attempt zero."""
    return [r["id"] for r in await db.fetch(queries.JOBS_RETRY, list(ids))]


async def get_job(db: Executor, job_id: int) -> dict[str, Any] | None:
    """The job's row as a dict, or None if there is none (never existed, or pruned by retention)."""
    row = await db.fetchrow(queries.JOB_GET, job_id)
    return dict(row) if row else None


async def job_history(db: Executor, job_id: int) -> list[dict[str, Any]]:
    """Every failed attempt of a job, oldest first: attempt, at, worker_id, error, traceback.
    last_error keeps only the latest line; this is the "why did it fail?" of each attempt."""
    return [dict(r) for r in await db.fetch(queries.JOB_ERRORS, job_id)]
