"""The autoscaling control loop: one implementation, used by `shoal up` and by the operator.

Like KEDA's scaler interface, a backend only says how many replicas there are and how to
ask for a different number (`ScaleTarget`), and where the queue and its knobs are right now
(`Source`); measuring, deciding, writing replicas, waiting, waking and backing off are all
here, so the two backends cannot drift apart. Unlike KEDA's PostgreSQL scaler it does not
poll every 30 s with a fresh connection: it ticks every `Plan.interval` on a shared pool,
and a LISTEN on the enqueue channel makes a burst (or the first job for a queue scaled to
zero) tick at once.

Each tick: ask the source for the `Plan` (the operator re-reads the live Queue spec, so an
edit applies without a restart), measure the queue and read its flow control from its
``shoal.queues`` row (`shoal.scaler.measure`: a paused queue's backlog is not counted, so a
paused queue never scales up, whichever backend runs the loop), read the current count,
decide, and write the count if it changed. This loop is the only writer of replicas once
they exist; the optional `on_tick` callback sees every tick's `TickReport` (the operator
turns it into status, Events and metrics), so whoever reports a scale learns it from the
one place that made it.

With `hands_off_when_fixed` (the operator) a policy with nothing to decide (min == max,
no scale to zero) is "autoscaling off": the loop still measures and reports, but never
writes replicas, so KEDA, an HPA or ``kubectl scale`` can own them; its memory is dropped
so that turning autoscaling back on starts from the count found then. Without it (`shoal
up`, where nobody else owns the processes) the fixed count is applied.

The loop never dies of an error: a failed tick (database down, a Deployment not created
yet, an API error, a tick hung past `TICK_TIMEOUT`) is logged once and retried with
`shoal.backoff.loop_delay`; `NotReady` and an undeclared queue are expected waits, logged at
debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import asyncpg

from shoal.backoff import loop_delay
from shoal.errors import UnknownQueueError
from shoal.scaler import drain
from shoal.scaler.decision import Decision, Observation, Policy, ScalerState, decide
from shoal.scaler.measure import Measurement, count_cap, create_measure_pool, measure
from shoal.scaler.wakeups import EnqueueWakeups

__all__ = ["Autoscaler", "EnqueueWakeups", "FixedSource", "Measurement", "NotReady", "Plan", "ScaleTarget",
           "Source", "TickReport", "create_measure_pool", "measure"]

log = logging.getLogger("shoal.scaler")

MIN_INTERVAL = 0.05  # s: the fastest a loop polls
MIN_WAKE_GAP = 0.2  # s: enqueue wake-ups closer than this after a tick are merged into one tick
TICK_TIMEOUT = 15.0  # s: a tick that hangs (a database that stopped answering) is abandoned and retried
MAX_BACKOFF = 30.0  # s: the longest wait after failed ticks
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
HANDS_OFF = "autoscaling off (minimum == maximum, no scale to zero): replicas are left to whoever owns them"


class ScaleTarget(Protocol):
    """Something with a replica count: a Deployment's scale subresource, local processes."""

    async def current_replicas(self) -> int: ...

    async def set_replicas(self, desired: int, decision: Decision) -> None: ...


class NotReady(Exception):
    """Nothing can be scaled yet, for a reason that is someone else's to fix or fixes itself
    (an invalid spec the reconciler reports, a database not reachable yet, a Deployment not
    created yet). Logged at debug; the loop retries after `retry_after` seconds (at least its
    interval), or with backoff when None."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Plan:
    """What one tick scales. `policy` holds the scaling knobs; its `rate_limit` and
    `concurrency_limit` are replaced by the queue row's, which the workers obey."""

    queue: str
    pool: asyncpg.Pool
    policy: Policy
    interval: float = 1.0
    wakeups: EnqueueWakeups | None = None


class Source(Protocol):
    """Where the loop finds its `Plan` on every tick (may raise `NotReady`)."""

    async def plan(self) -> Plan: ...

    async def reset(self) -> None:
        """A tick failed: forget anything cached (a database URL) that may be why."""


@dataclass(frozen=True)
class FixedSource:
    """A queue on a known pool, with knobs from a callable (`shoal up`, benchmarks)."""

    queue: str
    pool: asyncpg.Pool
    policy: Callable[[], Policy]
    interval: float = 1.0
    wakeups: EnqueueWakeups | None = None

    async def plan(self) -> Plan:
        return Plan(self.queue, self.pool, self.policy(), self.interval, self.wakeups)

    async def reset(self) -> None:
        return None


@dataclass(frozen=True)
class TickReport:
    """One successful tick: the decision, what it was based on, and whether replicas were written."""

    plan: Plan
    decision: Decision
    measurement: Measurement
    before: int  # the replica count found
    scaled: bool  # this tick wrote decision.desired
    autoscaling: bool  # False: hands off (see the module docstring)
    seconds: float  # measure, read, decide and write


OnTick = Callable[[TickReport], Awaitable[None] | None]
# Called with the failure's reason (`failure_reason`) and the exception of every failed tick.
OnFailure = Callable[[str, Exception], None]


def failure_reason(exc: Exception) -> str:
    """A failed tick's cause as one of a few fixed words (a metric label: bounded): `not_ready`
    (the Queue is waiting for its spec or database: expected), `unknown_queue`, `database`,
    `timeout`, or `other` (the Kubernetes API, a bug)."""
    if isinstance(exc, NotReady):
        return "not_ready"
    if isinstance(exc, UnknownQueueError):
        return "unknown_queue"
    if isinstance(exc, DATABASE_ERRORS):
        return "database"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


class Autoscaler:
    """Measure → decide → apply, for one queue, every interval or at once on enqueue.

    Give either `source` or, for a fixed queue, `queue`, `pool` and `policy` (a callable, read
    every tick) with `interval` and `wakeups`. `name` labels log lines.
    """

    def __init__(self, *, target: ScaleTarget, source: Source | None = None, queue: str = "",
                 pool: asyncpg.Pool | None = None, policy: Callable[[], Policy] | None = None,
                 interval: float = 1.0, wakeups: EnqueueWakeups | None = None, on_tick: OnTick | None = None,
                 on_failure: OnFailure | None = None, hands_off_when_fixed: bool = False, name: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if source is None:
            if pool is None or policy is None or not queue:
                raise TypeError("Autoscaler needs a source, or a queue, a pool and a policy")
            source = FixedSource(queue, pool, policy, interval, wakeups)
        self.source = source
        self.target = target
        self.on_tick = on_tick
        self.on_failure = on_failure
        self.hands_off_when_fixed = hands_off_when_fixed
        self.name = name or f"queue {queue!r}"
        self.clock = clock
        self.interval = max(interval, MIN_INTERVAL)
        self.state = ScalerState()
        self.last: Decision | None = None
        self.ticks = 0  # successful ticks so far
        self.failures = 0  # failed ticks in a row
        self.last_error = ""
        self.queue = ""  # bound by the last plan
        self._pool: asyncpg.Pool | None = None
        self._wakeups: EnqueueWakeups | None = None
        self.wake: asyncio.Event | None = None

    # -- running

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; never returns early because of an error."""
        try:
            while not stop.is_set():
                started = self.clock()
                delay = await self.step()
                await self._wait(stop, delay, started)
        finally:
            self._unsubscribe()

    async def step(self) -> float:
        """One tick with its error handling; returns how long to wait before the next."""
        try:
            await asyncio.wait_for(self._plan_and_tick(), TICK_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never die: report, back off, let the source re-resolve
            return await self._failed(exc)
        if self.failures:
            log.info("autoscaler for %s recovered after %d failed tick(s)", self.name, self.failures)
        self.failures, self.last_error = 0, ""
        return self.interval

    async def _plan_and_tick(self) -> None:
        plan = await self.source.plan()
        self._bind(plan)
        if plan.wakeups is not None:
            await plan.wakeups.ensure_connected()
        if self.wake is not None:
            self.wake.clear()  # an enqueue from now on ticks again
        await self.tick(plan)

    async def _failed(self, exc: Exception) -> float:
        self.failures += 1
        expected = isinstance(exc, NotReady | UnknownQueueError)
        error = str(exc) if isinstance(exc, NotReady) else f"{type(exc).__name__}: {exc}"
        level = logging.DEBUG if expected or error == self.last_error else logging.WARNING
        log.log(level, "autoscaler tick for %s failed (%d in a row, retrying with backoff): %s", self.name,
                self.failures, error)
        self.last_error = error
        if self.on_failure is not None:
            self.on_failure(failure_reason(exc), exc)
        if isinstance(exc, DATABASE_ERRORS) and self._wakeups is not None:
            await self._wakeups.close()  # reconnected (and every loop woken) on the next tick
        await self.source.reset()
        if isinstance(exc, NotReady) and exc.retry_after is not None:
            return max(self.interval, exc.retry_after)
        return loop_delay(self.failures, base=max(self.interval, 1.0), cap=MAX_BACKOFF)

    def _bind(self, plan: Plan) -> None:
        """Follow the plan's queue, pool and wake-ups; a different queue or database starts fresh."""
        if plan.queue != self.queue or plan.pool is not self._pool:
            self.state = ScalerState()
        if plan.queue != self.queue or plan.wakeups is not self._wakeups:
            self._unsubscribe()
            self._wakeups = plan.wakeups
            self.wake = plan.wakeups.subscribe(plan.queue) if plan.wakeups is not None else None
        self.queue, self._pool = plan.queue, plan.pool
        self.interval = max(plan.interval, MIN_INTERVAL)

    def _unsubscribe(self) -> None:
        if self._wakeups is not None and self.wake is not None:
            self._wakeups.unsubscribe(self.queue, self.wake)
        self.wake = None

    async def _wait(self, stop: asyncio.Event, delay: float, started: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if self.wake is not None:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        # Woken by an enqueue right after a tick: merge a storm of wake-ups into one tick.
        gap = MIN_WAKE_GAP - (self.clock() - started)
        if gap > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)

    # -- one tick

    async def tick(self, plan: Plan) -> TickReport:
        """Measure, decide and (if it changed) write the replica count; report it."""
        started = time.perf_counter()
        # With a drain objective the backlog is counted as far as the objective can use it.
        cap = drain.count_cap(plan.policy, self.state.speed, count_cap(plan.policy))
        m = await measure(plan.pool, plan.queue, plan.policy, cap=cap)
        if plan.wakeups is not None:  # no ready job: the next enqueue should tick at once
            await plan.wakeups.wait_for_jobs(plan.queue, m.ready == 0)
        policy = replace(plan.policy, rate_limit=m.rate_limit, concurrency_limit=m.concurrency_limit)
        current = await self.target.current_replicas()
        autoscaling = policy.autoscaling_enabled or not self.hands_off_when_fixed
        if autoscaling:
            decision = self._decide(m, policy, current)
        else:
            self.state = ScalerState()
            decision = Decision(desired=current, reason=HANDS_OFF, direction="none", recommendation=current)
        scaled = decision.desired != current
        if scaled:
            log.info("%s: %s", self.name, decision.reason,
                     extra={"queue": plan.queue, "from": current, "to": decision.desired})
            await self.target.set_replicas(decision.desired, decision)
        self.last, self.ticks = decision, self.ticks + 1
        report = TickReport(plan=plan, decision=decision, measurement=m, before=current, scaled=scaled,
                            autoscaling=autoscaling, seconds=time.perf_counter() - started)
        if self.on_tick is not None:
            result = self.on_tick(report)
            if result is not None:
                await result
        return report

    def _decide(self, m: Measurement, policy: Policy, current: int) -> Decision:
        # Paused: only running jobs count (they finish on the replicas they have); the backlog
        # waits for the queue to resume, which notifies and so wakes the loop like a burst.
        # Throughput (from the workers' heartbeats) feeds the drain objective and the rate-limit ceiling.
        obs = Observation(ready=0 if m.paused else m.ready, running=m.running, current_replicas=current,
                          now=self.clock(), ready_capped=m.ready_capped and not m.paused,
                          throughput=m.runs_per_second if m.reporting else None,
                          seconds_per_run=_seconds(m.seconds_per_run), reporting=m.reporting,
                          oldest_ready_age=None if m.paused else _seconds(m.oldest_ready_age))
        decision, self.state = decide(obs, policy, self.state)
        if m.paused:
            decision = replace(decision, reason=f"{decision.reason} (queue paused: {m.ready} ready not counted)")
        return decision


def _seconds(value: float | None) -> float | None:
    """A measured duration as the decision takes it: finite and >= 0 (clock skew can make an age
    slightly negative), None when unknown."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return max(float(value), 0.0)
