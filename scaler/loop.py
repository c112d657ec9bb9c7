"""The autoscaling control loop, shared by every backend.

Like KEDA's scaler interface, a backend only has to say how many replicas there are and
how to ask for a different number (`ScaleTarget`); measuring, deciding and reacting are
here. Unlike KEDA's Postgres scaler it does not poll every 30 s with a fresh connection:
it ticks every `interval` on a shared pool, and a LISTEN on the enqueue channel makes a
burst (or the first job for a queue scaled to zero) tick at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import asyncpg

from shoal.queues import ready_and_running
from shoal.scaler.decision import Decision, Observation, Policy, ScalerState, decide

log = logging.getLogger("shoal.scaler")

# Measurements must never hang a control loop (KEDA's scaler crash-looped on slow counts).
MEASURE_TIMEOUT_MS = 2000


class ScaleTarget(Protocol):
    """Something with a replica count: a Deployment's scale subresource, local processes."""

    async def current_replicas(self) -> int: ...

    async def set_replicas(self, desired: int, decision: Decision) -> None: ...


@dataclass(frozen=True)
class Measurement:
    ready: int
    running: int
    ready_capped: bool
    seconds: float  # how long the measuring query took


def count_cap(policy: Policy) -> int:
    """Counting beyond what max replicas could use changes no decision, so stop there."""
    return max(1, policy.max_replicas * policy.target) + 1


async def measure(pool: asyncpg.Pool, queue: str, policy: Policy) -> Measurement:
    cap = count_cap(policy)
    started = time.perf_counter()
    ready, running = await ready_and_running(pool, queue, cap)
    return Measurement(ready, running, ready >= cap, time.perf_counter() - started)


async def create_measure_pool(database_url: str, *, max_size: int = 4) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url, min_size=1, max_size=max_size,
        server_settings={"statement_timeout": str(MEASURE_TIMEOUT_MS), "application_name": "shoal-autoscaler"},
    )


class EnqueueWakeups:
    """One LISTEN connection per database, fanning `shoal_jobs` notifications out to loops."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.events: dict[str, set[asyncio.Event]] = {}
        self.conn: asyncpg.Connection | None = None
        self._connecting = asyncio.Lock()  # many loops share one listener: connect it once

    def subscribe(self, queue: str) -> asyncio.Event:
        event = asyncio.Event()
        self.events.setdefault(queue, set()).add(event)
        return event

    def unsubscribe(self, queue: str, event: asyncio.Event) -> None:
        self.events.get(queue, set()).discard(event)

    async def ensure_connected(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            return
        async with self._connecting:
            if self.conn is not None and not self.conn.is_closed():
                return
            conn = await asyncpg.connect(self.database_url)
            await conn.add_listener("shoal_jobs", self._on_notify)
            self.conn = conn
        for events in self.events.values():  # we may have missed some while disconnected
            for event in events:
                event.set()

    def _on_notify(self, _c: Any, _pid: int, _channel: str, queue: str) -> None:
        for event in self.events.get(queue, ()):
            event.set()

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


class Autoscaler:
    """Measure → decide → apply, for one queue, every `interval` or at once on enqueue."""

    def __init__(self, *, queue: str, pool: asyncpg.Pool, target: ScaleTarget,
                 policy: Callable[[], Policy], interval: float = 1.0,
                 wakeups: EnqueueWakeups | None = None,
                 on_decision: Callable[[Decision, Measurement, int], Any] | None = None,
                 paused: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.pool = pool
        self.target = target
        self.policy = policy
        self.interval = interval
        self.wakeups = wakeups
        self.on_decision = on_decision
        self.paused = paused  # a paused queue starts no job: its backlog must not add replicas
        self.clock = clock
        self.state = ScalerState()
        self.last: Decision | None = None

    async def tick(self) -> Decision:
        policy = self.policy()
        m = await measure(self.pool, self.queue, policy)
        current = await self.target.current_replicas()
        paused = self.paused is not None and self.paused()
        # Paused: only running jobs count (they finish on the pods they have); the backlog
        # waits for the queue to resume and then wakes the loop like a burst.
        obs = Observation(ready=0 if paused else m.ready, running=m.running, current_replicas=current,
                          now=self.clock(), ready_capped=m.ready_capped and not paused)
        decision, self.state = decide(obs, policy, self.state)
        if paused:
            decision = replace(decision, reason=f"{decision.reason} (queue paused: {m.ready} ready not counted)")
        if decision.desired != current:
            log.info("scaling", extra={"queue": self.queue, "from": current, "to": decision.desired,
                                       "reason": decision.reason})
            await self.target.set_replicas(decision.desired, decision)
        self.last = decision
        if self.on_decision is not None:
            result = self.on_decision(decision, m, current)
            if asyncio.iscoroutine(result):
                await result
        return decision

    async def run(self, stop: asyncio.Event) -> None:
        wake = self.wakeups.subscribe(self.queue) if self.wakeups else asyncio.Event()
        backoff = self.interval
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    if self.wakeups:
                        await self.wakeups.ensure_connected()
                    await self.tick()
                    backoff = self.interval
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("autoscaler tick failed", extra={"queue": self.queue, "error": repr(exc)})
                    if self.wakeups:
                        await self.wakeups.close()
                    backoff = min(backoff * 2, 30.0)
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
                await asyncio.wait(waiters, timeout=backoff, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            if self.wakeups:
                self.wakeups.unsubscribe(self.queue, wake)
