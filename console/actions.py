"""What an admin does: retry, cancel, pause and resume, through the core functions the CLI uses
(`shoal jobs retry/cancel`, `shoal queue pause/resume`), so both behave the same.

Each action logs one structured line (who, what, which ids) through the root logger that
shoal.logs sets up.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from shoal import manage, queues
from shoal.console import timing
from shoal.console.filters import JobFilter
from shoal.console.queries import sql

log = logging.getLogger("shoal.console")
BULK_LIMIT = 10_000  # failed jobs retried per bulk call at most; call again for more


def _log(action: str, **fields: Any) -> None:
    log.info("console %s", action, extra={"who": "admin", "action": action, **fields})


async def retry(pool: asyncpg.Pool, job_id: int) -> bool:
    """Run a failed or cancelled job again from attempt zero; False if it was neither."""
    with timing.db():
        done = await manage.retry(pool, [job_id])
    _log("retry", ids=str([job_id]), changed=len(done))
    return bool(done)


async def cancel(pool: asyncpg.Pool, job_id: int) -> str | None:
    """Cancel a pending job, or ask a running one's worker to stop it: the new state, or None if
    the job was neither pending nor running."""
    with timing.db():
        result = await manage.cancel(pool, [job_id])
    _log("cancel", ids=str([job_id]), result=result.get(job_id))
    return result.get(job_id)


async def set_paused(pool: asyncpg.Pool, name: str, paused: bool) -> None:
    """Pause or resume a queue (UnknownQueueError when it is not declared)."""
    with timing.db():
        await queues.set_paused(pool, name, paused)
    _log("pause" if paused else "resume", queue=name)


async def retry_failed(pool: asyncpg.Pool, f: JobFilter) -> tuple[int, bool]:
    """Retry the failed jobs matching the filter, at most BULK_LIMIT of them: the number
    retried, and whether more may remain."""
    with timing.db():
        ids = [r["id"] for r in await pool.fetch(sql("failed_ids"), f.queue, f.task, f.since, f.until,
                                                  BULK_LIMIT + 1)]
        done = await manage.retry(pool, ids[:BULK_LIMIT])
    _log("retry-failed", queue=f.queue, task=f.task, count=len(done),
         ids=str(done[:50]) + (" …" if len(done) > 50 else ""))
    return len(done), len(ids) > BULK_LIMIT
