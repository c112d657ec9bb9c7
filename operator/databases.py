"""Database pools, one per URL, shared by every Queue and CronJob that names that database.

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

log = logging.getLogger("shoal.operator.databases")


class Databases:
    """A cache of migrated pools keyed by URL."""

    def __init__(self, *, max_size: int = 4, connect_timeout: float = 5.0) -> None:
        self._pools: dict[str, asyncpg.Pool] = {}
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

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError):
                pool.terminate()
