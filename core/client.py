"""The public API for producing jobs and following them: enqueue, wait, cancel, retry.

Every function takes an asyncpg connection (or pool) first, so an application can enqueue
on its own connection inside its own transaction: the job commits or rolls back together
with the application's data. `Client` bundles a pool for the common case.

The functions live with what they do (shoal.jobs: the value types; shoal.producer: adding
jobs; shoal.waiting: waiting for them; shoal.manage: cancel, retry, look-ups); this module
gathers them under the one name applications import, and holds `Client`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shoal import producer, validation
from shoal.jobs import FINAL_STATES, Executor, JobResult, NewJob
from shoal.manage import cancel, get_job, job_history, retry
from shoal.producer import COPY_MIN_BATCH, enqueue, enqueue_many
from shoal.validation import encode_payload
from shoal.waiting import done_mentions, wait

__all__ = [
    "COPY_MIN_BATCH", "FINAL_STATES", "Client", "Executor", "JobResult", "NewJob", "cancel", "done_mentions",
    "encode_payload", "enqueue", "enqueue_many", "get_job", "job_history", "retry", "wait",
]

# bench/enqueue_paths.py times the two enqueue paths apart through these names, which lived here
# before shoal.producer; new code takes them from there. Patching them here changes nothing.
_enqueue_insert = producer._enqueue_insert
_enqueue_copy = producer._enqueue_copy
_validate = validation.validate


class Client:
    """A pool plus the functions of this module, for applications that do not manage connections."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, database_url: str, *, min_size: int = 1, max_size: int = 10) -> Client:
        return cls(await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size))

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(self, queue: str, task: str, payload: Any = None, *,
                      conn: asyncpg.Connection | None = None, **options: Any) -> int:
        """Add one job; pass `conn` to enqueue inside your own transaction."""
        return await enqueue(conn or self.pool, queue, task, payload, **options)

    async def enqueue_many(self, jobs: Iterable[NewJob], *, conn: asyncpg.Connection | None = None) -> list[int]:
        return await enqueue_many(conn or self.pool, jobs)

    async def wait_for(self, job_id: int, timeout: float | None = None) -> JobResult:
        return (await wait(self.pool, [job_id], timeout=timeout))[job_id]

    async def wait_for_all(self, ids: Sequence[int], timeout: float | None = None) -> dict[int, JobResult]:
        return await wait(self.pool, ids, mode="all", timeout=timeout)

    async def wait_for_first(self, ids: Sequence[int], timeout: float | None = None) -> JobResult:
        """The first of `ids` to finish (earliest finished_at among those final when the wait ends)."""
        results = await wait(self.pool, ids, mode="first", timeout=timeout)
        return min(results.values(), key=lambda r: r.finished_at or datetime.max.replace(tzinfo=UTC))

    async def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        return await cancel(self.pool, ids)

    async def retry(self, ids: Sequence[int]) -> list[int]:
        return await retry(self.pool, ids)

    async def get_job(self, job_id: int) -> dict[str, Any] | None:
        return await get_job(self.pool, job_id)

