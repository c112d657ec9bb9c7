"""The autoscaler's wake-up on enqueue: one LISTEN connection per database, for every loop on it.

Enqueues notify with the queue's name when someone waits for the queue's jobs
(sql/015_waiter_locks.sql), and so do `shoal queue pause/resume` and a reconcile that changes
the queue row. For a queue whose last reading found no ready job this connection is such a
waiter: it holds the queue's waiter lock, so that a queue at zero getting its first job, and a
resumed queue, tick its loop at once instead of at the next poll.

An enqueue that tested the lock just before it was taken found no waiter and sent nothing; its
transaction began before the lock's (its id is older), and its job was not visible to the reading
either. So after taking the lock this waits, off the loop, until every transaction older than the
lock has ended (`shoal.wake_barrier`, which never blocks) and then ticks the queue's loops once
more: what such an enqueue committed is read then, not a poll later. The worker's claimer closes
the same race the same way (`Claimer._ready_to_sleep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from shoal import queries
from shoal.backoff import LoopBackoff

# How long the look after a new lock waits for older transactions to end. Past it (a transaction
# left open that long) the loop's next poll reads what they committed.
BARRIER_PATIENCE = 60.0


class EnqueueWakeups:
    """One LISTEN connection per database, fanning `shoal_jobs` notifications out to loops."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.events: dict[str, set[asyncio.Event]] = {}
        self.conn: asyncpg.Connection | None = None
        self._connecting = asyncio.Lock()  # many loops share one listener: connect it once
        self.waiting: set[str] = set()  # queues whose waiter lock this connection holds
        self._locking = asyncio.Lock()  # one statement at a time on the connection
        self._looks: set[asyncio.Task[None]] = set()  # looks after a new lock (see the module's docstring)

    def subscribe(self, queue: str) -> asyncio.Event:
        event = asyncio.Event()
        self.events.setdefault(queue, set()).add(event)
        return event

    def unsubscribe(self, queue: str, event: asyncio.Event) -> None:
        self.events.get(queue, set()).discard(event)

    async def wait_for_jobs(self, queue: str, waiting: bool) -> None:
        """Hold (True) or let go (False) the queue's waiter lock, once. A failed change closes the
        connection (whether the lock is held is then unknown; a new session holds none)."""
        async with self._locking:
            conn = self.conn
            if conn is None or conn.is_closed():
                return
            try:
                for gone in [q for q in self.waiting if not self.events.get(q)]:  # no loop left for it
                    self.waiting.discard(gone)
                    await conn.fetchval(queries.STOP_WAITING, gone)
                if (queue in self.waiting) is waiting:
                    return
                if waiting:
                    since = await conn.fetchval(queries.WAIT_FOR_JOBS, queue)
                    self.waiting.add(queue)
                    look = asyncio.create_task(self._look_again(conn, queue, since))
                    self._looks.add(look)
                    look.add_done_callback(self._looks.discard)
                else:
                    self.waiting.discard(queue)
                    await conn.fetchval(queries.STOP_WAITING, queue)
            except Exception:
                await self.close()
                raise

    async def _look_again(self, conn: asyncpg.Connection, queue: str, since: str) -> None:
        """Tick the queue's loops once every transaction older than its lock (`since`) has ended,
        while the lock is still held on `conn`."""
        backoff = LoopBackoff(base=0.01, cap=1.0)
        give_up = time.monotonic() + BARRIER_PATIENCE
        while time.monotonic() < give_up:
            async with self._locking:
                replaced = self.conn is not conn  # a new session, whose reconnection woke every loop
                if replaced or conn.is_closed() or queue not in self.waiting:
                    return
                try:
                    passed = await conn.fetchval(queries.WAKE_BARRIER, since)
                except Exception:
                    return  # the loops' next tick finds the connection broken and reconnects
            if passed:
                self._wake(queue)
                return
            await asyncio.sleep(backoff.failed())

    async def ensure_connected(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            return
        async with self._connecting:
            if self.conn is not None and not self.conn.is_closed():
                return
            conn = await asyncpg.connect(self.database_url)
            await conn.add_listener("shoal_jobs", self._on_notify)
            self.conn, self.waiting = conn, set()
        for events in self.events.values():  # we may have missed some while disconnected
            for event in events:
                event.set()

    def _on_notify(self, _c: Any, _pid: int, _channel: str, queue: str) -> None:
        self._wake(queue)

    def _wake(self, queue: str) -> None:
        """Tick every loop of `queue` (a notification, or the look after a new lock)."""
        for event in self.events.get(queue, ()):
            event.set()

    async def close(self) -> None:
        for look in list(self._looks):
            look.cancel()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn, self.waiting = None, set()
