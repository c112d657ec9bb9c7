"""Database pools, one per URL, shared by every Queue and CronJob that names that database.

Per URL there are also the autoscalers' shared resources: a small measuring pool (with a
``statement_timeout``, so a slow count can never hang a control loop) and one LISTEN
connection (`EnqueueWakeups`) that wakes every Queue's loop on that database at enqueue.

Many resources usually point at one database; a pool per resource would multiply
connections for nothing. The first use of a URL also migrates its schema (once per URL per
process; `shoal.migrate` serialises concurrent migrators with an advisory lock). A URL that
fails is not cached, so the next reconcile tries again.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from shoal.migrate import migrate
from shoal.scaler.loop import EnqueueWakeups, create_measure_pool

log = logging.getLogger("shoal.operator.databases")


class Databases:
    """A cache of migrated pools keyed by URL."""

    def __init__(self, *, max_size: int = 4, connect_timeout: float = 5.0) -> None:
        self._pools: dict[str, asyncpg.Pool] = {}
        self._measure_pools: dict[str, asyncpg.Pool] = {}
        self._wakeups: dict[str, EnqueueWakeups] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._max_size = max_size
        self._timeout = connect_timeout

    async def pool(self, url: str) -> asyncpg.Pool:
        """A ready pool for ``url``; raises OSError/asyncpg errors when it cannot connect."""
        if url in self._pools:
            return self._pools[url]
        async with self._locks.setdefault(url, asyncio.Lock()):
            if url in self._pools:
                return self._pools[url]
            await asyncio.wait_for(migrate(url), self._timeout * 6)
            pool = await asyncpg.create_pool(url, min_size=0, max_size=self._max_size, timeout=self._timeout,
                                             command_timeout=30)
            self._pools[url] = pool
            log.info("connected to a database and migrated its schema")
            return pool

    async def measure_pool(self, url: str) -> asyncpg.Pool:
        """The autoscalers' pool for ``url`` (migrated first, like `pool`)."""
        if url in self._measure_pools:
            return self._measure_pools[url]
        await self.pool(url)  # migrate once, with the same error behaviour
        async with self._locks.setdefault(url, asyncio.Lock()):
            if url not in self._measure_pools:
                self._measure_pools[url] = await asyncio.wait_for(create_measure_pool(url), self._timeout * 2)
            return self._measure_pools[url]

    def wakeups(self, url: str) -> EnqueueWakeups:
        """The one enqueue listener for ``url`` (it connects lazily, in the loops)."""
        if url not in self._wakeups:
            self._wakeups[url] = EnqueueWakeups(url)
        return self._wakeups[url]

    async def close(self) -> None:
        wakeups, self._wakeups = list(self._wakeups.values()), {}
        for listener in wakeups:
            await listener.close()
        pools, self._pools = [*self._pools.values(), *self._measure_pools.values()], {}
        self._measure_pools = {}
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError):
                pool.terminate()
