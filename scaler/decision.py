"""The scaling decision: how many worker replicas a queue should have right now.

This module is a pure function plus the values it consumes and returns. It performs no I/O
and never reads a clock: the caller measures the queue, passes the time in, and keeps the
returned `ScalerState` for the next tick. That makes every rule testable tick by tick and
lets the same decision drive a Kubernetes Deployment (the operator) and local worker
processes (`shoal up`).

The model, in order (see docs/autoscaling.md for a worked example):

1. **Need.** ``ceil((ready + running) / target_per_replica)``. Running jobs count as work:
   a scaler that counts only ready rows sees an empty backlog the moment workers are
   saturated, scales down, the backlog grows again, and it flaps. With a drain objective
   (``drain_within``) and a measured replica speed, instead the fewest replicas that clear
   that backlog within the objective (`shoal.scaler.drain`).
2. **Useful.** Replicas that the queue's global concurrency cap or rate limit would leave
   idle are never added (see `shoal.scaler.limits.useful_replicas`).
3. **Bounds.** Clamp to ``[max(min_replicas, 1), max_replicas]``; zero is a separate state,
   reachable only with ``scale_to_zero``.
4. **Stabilize.** Scale up at once. Scale down only to the highest recommendation seen in
   the last ``scale_down_delay`` seconds (the HPA's scale-down stabilization window), so a
   brief dip never removes pods that the next second needs again.
5. **Zero.** Only when allowed and the queue has had no ready and no running job for the
   whole delay. Any ready job wakes it at once, and the window keeps it awake for a full
   delay afterwards: it never flaps around zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from shoal.errors import ValidationError
from shoal.scaler import drain
from shoal.scaler.limits import ceil_div, plural, useful_replicas

__all__ = ["Decision", "Direction", "Observation", "Policy", "ScalerState", "decide", "translate_error",
           "useful_replicas"]

Direction = Literal["up", "down", "none"]


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.3g} s"


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What was measured on this tick.

    `ready` may come from a bounded count (``LIMIT n``) so that measuring stays cheap on a
    huge backlog; `ready_capped` says the bound was hit, i.e. the true backlog is at least
    `ready`. `current_replicas` must be the replica count last *requested* (the scale
    subresource's ``spec.replicas``, or the number of local worker processes wanted), not
    the number of ready pods: pods that are still starting would otherwise look like a
    shortfall and be asked for again. `now` is any monotonic clock in seconds; only
    differences matter. `throughput` is jobs/s completed recently by the `reporting`
    workers, or None when unknown; `seconds_per_run` their mean job duration (None: no run
    measured); `oldest_ready_age` how long the oldest ready job has waited (None: unknown or
    none ready). They feed the drain objective and the rate-limit ceiling (`shoal.scaler.drain`).
    """

    ready: int
    running: int
    current_replicas: int
    now: float
    ready_capped: bool = False
    throughput: float | None = None
    seconds_per_run: float | None = None
    reporting: int = 0
    oldest_ready_age: float | None = None

    def __post_init__(self) -> None:
        for name in ("ready", "running", "current_replicas"):
            if getattr(self, name) < 0:
                raise ValidationError(name, "must be >= 0")
        if not math.isfinite(self.now):
            raise ValidationError("now", "must be a finite number of seconds")
        if self.throughput is not None and not (math.isfinite(self.throughput) and self.throughput >= 0):
            raise ValidationError("throughput", "must be a finite number of jobs/s >= 0, or None")
        if self.reporting < 0:
            raise ValidationError("reporting", "must be >= 0")
        for name in ("seconds_per_run", "oldest_ready_age"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValidationError(name, "must be a finite number of seconds >= 0, or None")


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A queue's autoscaling knobs, in the decision's own names.

    Each backend maps its own spelling onto these (the operator a Queue's
    ``spec.autoscaling``, `shoal up` its ``--min-workers`` flags) and supplies its own
    defaults: the bounds have none here, so the Queue CRD's defaults live in one place
    (`shoal.operator.queue_spec`). Errors name these fields; `translate_error` turns them
    into the caller's names.

    `concurrency` is how many jobs one replica runs at once. `target_per_replica` is how
    many jobs in the system (ready + running) one replica should account for; None means
    `concurrency`, i.e. "enough replicas that every job could be running now". A higher
    value trades latency for fewer replicas. `rate_limit` (jobs/s) and `concurrency_limit`
    (jobs running at once, across all replicas) are the queue's global limits, used only to
    avoid adding replicas that could not get work. Expected job duration is deliberately
    not a knob: it is rarely known up front, and when it matters (rate limits) it is
    estimated from what is measured. `drain_within` (seconds) is the drain-time objective:
    once a replica's speed is measured, replicas are chosen so the backlog clears within it
    (`shoal.scaler.drain`) instead of by `target_per_replica`.
    """

    min_replicas: int
    max_replicas: int
    concurrency: int
    scale_down_delay: float
    target_per_replica: int | None = None
    scale_to_zero: bool = False
    rate_limit: float | None = None
    concurrency_limit: int | None = None
    drain_within: float | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValidationError("min_replicas", "must be >= 0")
        if self.max_replicas < 1:
            raise ValidationError("max_replicas", "must be >= 1")
        if self.min_replicas > self.max_replicas:
            raise ValidationError("min_replicas", f"must be <= max_replicas ({self.max_replicas}); lower it "
                                                  "or raise max_replicas")
        if self.concurrency < 1:
            raise ValidationError("concurrency", "must be >= 1")
        if self.target_per_replica is not None and self.target_per_replica < 1:
            raise ValidationError("target_per_replica", "must be >= 1")
        if not (math.isfinite(self.scale_down_delay) and self.scale_down_delay >= 0):
            raise ValidationError("scale_down_delay", "must be a finite number of seconds >= 0")
        if self.rate_limit is not None and not (math.isfinite(self.rate_limit) and self.rate_limit > 0):
            raise ValidationError("rate_limit", "must be > 0 jobs/s, or None for no limit")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValidationError("concurrency_limit", "must be >= 1, or None for no limit")
        if self.drain_within is not None and not (math.isfinite(self.drain_within) and self.drain_within >= 1):
            raise ValidationError("drain_within", "must be a number of seconds >= 1, or None for no objective")

    @property
    def target(self) -> int:
        """Jobs per replica to aim for (`target_per_replica`, defaulting to `concurrency`)."""
        return self.target_per_replica if self.target_per_replica is not None else self.concurrency

    @property
    def effective_min(self) -> int:
        """The lowest replica count the decision may return (and a new Deployment starts at).

        Without `scale_to_zero` the floor is at least 1 even if `min_replicas` is 0: a queue
        that must not sleep keeps one worker. With it, 0 is reachable, but only after the
        idle delay; while the queue has work the floor is ``max(min_replicas, 1)``.
        """
        return self.min_replicas if self.scale_to_zero else max(self.min_replicas, 1)

    @property
    def active_min(self) -> int:
        """The floor while the queue is not asleep: never below one replica."""
        return max(self.min_replicas, 1)

    @property
    def autoscaling_enabled(self) -> bool:
        """False when there is nothing to decide (min_replicas == max_replicas, no scale to zero).

        A backend where someone else may own the count (Kubernetes: an HPA or KEDA, see
        docs/autoscaling.md) treats that as "autoscaling off" and leaves replicas alone; one
        where nobody else does (`shoal up`) applies the fixed count. `decide` answers with
        that fixed count either way.
        """
        return self.scale_to_zero or self.min_replicas != self.max_replicas


def translate_error(exc: ValidationError, names: Mapping[str, str]) -> ValidationError:
    """`exc` (raised by `Policy`) in the caller's vocabulary: its field and every policy field
    its message mentions renamed through `names` (e.g. ``min_replicas`` → ``--min-workers``
    or ``spec.autoscaling.minReplicas``), so a user reads the name they typed."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b")
    field = names.get(exc.field, exc.field)
    message = str(exc).removeprefix(f"{exc.field}: ")
    return ValidationError(field, pattern.sub(lambda m: names[m.group(1)], message))


@dataclass(frozen=True, kw_only=True)
class ScalerState:
    """What the rule remembers between ticks; start with ``ScalerState()``.

    `recommendations` holds (time, replicas) recommendations from the last
    `scale_down_delay` seconds, oldest first. Only entries that can still be the window's
    maximum are kept (an entry followed by a later one at least as high can never be the
    maximum again), so the tuple is strictly decreasing in value, its first entry is the
    window's maximum, and its length stays small however often the loop ticks.

    An empty window means "fresh": the loop (re)started and does not know what was
    recommended before, so the current replica count is taken as if it had just been
    recommended. A restart therefore delays scale-down by one window instead of dropping
    pods that the previous process had good reason to keep.

    `idle_since` is when the queue was first seen with no ready and no running job (None
    while it has work); `last_scale_time` is when a decision last changed the count.
    `speed` is the smoothed speed of a replica (`shoal.scaler.drain.Speed`).
    """

    recommendations: tuple[tuple[float, int], ...] = ()
    last_scale_time: float | None = None
    idle_since: float | None = None
    speed: drain.Speed = drain.Speed()


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The answer for one tick.

    `desired` is the replica count to request; `direction` compares it with the observed
    current count; `reason` is one human-readable line for Queue status, Events and logs,
    with the numbers that led to it. `recommendation` is this tick's instantaneous
    recommendation before the scale-down window was applied (useful as a metric).
    """

    desired: int
    reason: str
    direction: Direction
    recommendation: int


def _recommend(obs: Observation, policy: Policy, speed: drain.Speed) -> tuple[int, str]:
    """This tick's recommendation (memory: only the smoothed speed) and the sentence explaining it."""
    by_objective = drain.need(obs, policy, speed)
    if by_objective is not None:
        rec, why = by_objective
    else:
        target = policy.target
        rec = ceil_div(obs.ready + obs.running, target)
        ready = f"≥{obs.ready}" if obs.ready_capped else str(obs.ready)
        why = f"{ready} ready + {obs.running} running need {plural(rec, 'replica')} at {target}/replica"
    if obs.ready_capped and rec < obs.current_replicas:
        # The count hit its bound: the backlog is larger than measured, so this figure is a
        # lower bound on the need. A lower bound can justify scaling up, never down.
        rec = obs.current_replicas
        why += f"; backlog is only a lower bound, keeping {obs.current_replicas}"
    if rec > policy.max_replicas:
        rec = policy.max_replicas
        why += f"; maximum is {policy.max_replicas}"
    cap, cap_why = useful_replicas(obs, policy, speed.seconds_per_run)
    if cap is not None and rec > cap:
        rec = cap
        why += f"; {cap_why}"
    if rec == 0 and policy.scale_to_zero:
        return 0, why
    if rec < policy.active_min:
        # The minimum wins over the usefulness caps: the user asked for those replicas.
        rec = policy.active_min
        why += f"; minimum is {policy.active_min}"
    return rec, why


def _window(
    previous: tuple[tuple[float, int], ...], now: float, value: int, delay: float
) -> tuple[tuple[float, int], ...]:
    """Add (now, value) to the scale-down window and drop what can no longer be its maximum."""
    kept = [(t, v) for t, v in previous if now - t < delay]
    while kept and kept[-1][1] <= value:
        kept.pop()
    kept.append((now, value))
    return tuple(kept)


def _clamp_existing(replicas: int, policy: Policy) -> int:
    """An existing replica count brought within the policy's bounds (0 kept if allowed)."""
    if replicas == 0 and policy.scale_to_zero:
        return 0
    return min(max(replicas, policy.active_min), policy.max_replicas)


def decide(obs: Observation, policy: Policy, state: ScalerState) -> tuple[Decision, ScalerState]:
    """Decide the desired replica count for this tick; return it with the state for the next.

    Up: to this tick's recommendation at once (HPA semantics: a scale-up follows the
    current recommendation, not an older peak). Down: to the highest recommendation in
    the last `scale_down_delay` seconds, so the count never drops below anything
    recommended within the delay. Between the two, the current count is held. Zero
    additionally needs the queue to have been idle for the whole delay, which guards
    against sparse ticks (e.g. a loop that stalled) where the window alone proves nothing.
    """
    now = obs.now
    current = obs.current_replicas
    delay = policy.scale_down_delay
    speed = drain.observe(state.speed, obs, policy)
    rec, why = _recommend(obs, policy, speed)

    idle = obs.ready == 0 and obs.running == 0 and not obs.ready_capped
    idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None

    previous = state.recommendations or ((now, _clamp_existing(current, policy)),)
    window = _window(previous, now, rec, delay)
    peak_time, peak = window[0]

    desired = min(max(current, rec), peak)
    waiting_for_idle = False
    if desired == 0 and current > 0 and (idle_since is None or now - idle_since < delay):
        # The window says zero, but the queue has not been *seen* idle for the whole delay
        # (first tick, or ticks further apart than the delay): go no lower than one
        # replica yet. One, not the current count, so that a single ready job never asks
        # for fewer replicas than an empty queue (the decision stays monotonic in backlog).
        desired = 1
        waiting_for_idle = True
    desired = _clamp_existing(desired, policy)

    direction: Direction
    if waiting_for_idle and idle_since is not None:
        direction = "down" if desired < current else "up" if desired > current else "none"
        step = f"{current}→{desired}" if direction != "none" else str(current)
        verb = {"down": "scale down", "up": "scale up", "none": "hold"}[direction]
        reason = (
            f"{verb} {step}: queue idle for {_seconds(now - idle_since)}; "
            f"scale to zero after {_seconds(delay)}"
        )
    elif desired > current:
        direction = "up"
        verb = "wake from zero" if current == 0 else "scale up"
        reason = f"{verb} {current}→{desired}: {why}"
    elif desired < current:
        direction = "down"
        if desired == 0:
            idle_for = now - idle_since if idle_since is not None else 0.0
            reason = (
                f"scale to zero {current}→0: queue idle for {_seconds(idle_for)} (delay {_seconds(delay)})"
            )
        else:
            reason = f"scale down {current}→{desired}: {why}"
            if peak > rec:
                reason += f"; highest recommendation in the last {_seconds(delay)} is {peak}"
    else:
        direction = "none"
        if rec < desired:
            reason = (
                f"hold {current}: {why}; scale-down waits until {peak} recommended "
                f"{_seconds(now - peak_time)} ago is older than {_seconds(delay)}"
            )
        elif desired == 0:
            reason = f"asleep at 0: {why}"
        else:
            reason = f"steady at {current}: {why}"

    new_state = replace(
        state,
        recommendations=window,
        idle_since=idle_since,
        speed=speed,
        last_scale_time=now if direction != "none" else state.last_scale_time,
    )
    return Decision(desired=desired, reason=reason, direction=direction, recommendation=rec), new_state
