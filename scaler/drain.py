"""The drain-time objective: enough replicas that the backlog clears within ``drain_within`` seconds.

Pure, like `shoal.scaler.decision`, which calls it: no I/O, no clock; what it remembers
between ticks is a `Speed` kept in the decision's `ScalerState`.

**What is measured.** Every worker's heartbeat carries its handler runs and their summed
seconds; ``shoal.queue_throughput`` turns the live workers' last two beats into `reporting`
(workers with a rate), `throughput` (their summed runs/s) and `seconds_per_run` (mean handler
duration). One cheap query per tick, no write per job. Two estimates of the jobs/s one
replica completes follow from it:

* **From duration:** ``concurrency / seconds_per_run``. A job's duration does not depend on
  how much work waits, so this holds whether the replicas were busy or starved. It ignores
  per-job work outside the handler (claiming, completing, the event loop and CPU shared by
  the `concurrency` jobs of a process), so it is an upper bound: close for slow jobs,
  optimistic for fast ones.
* **Observed:** ``throughput / reporting``. The truth, overhead included, but only while the
  replicas were saturated: a starved replica completes only what it is given, and dividing a
  burst by that would ask for far too many replicas. So it is sampled only after every tick
  for `SATURATION_SECONDS` has seen the queue saturated: jobs waiting, and at least as many
  jobs outstanding (ready + running) as the requested replicas have slots, so no live
  worker can be short of work. (Ready jobs alone are not enough: a trickle that wakes the
  loop on each enqueue shows one ready job on every tick to workers that idle.) Ten seconds
  is two default heartbeat intervals: the rate spans a worker's last two beats, so by then
  it lies wholly within the busy period. Saturation is judged from the state as it was
  before this tick, so this tick's counts never change this tick's speed (and the decision
  stays monotonic in the backlog).

A replica's capacity is the lower of the two once both are known (the observed rate
catches the overhead the duration misses; the duration guards against a stale rate), the
duration-based one until then, and unknown (None) before any run was measured: the
decision then uses its default rule (``ceil((ready + running) / target)``).

**Smoothing.** Each estimate is an exponentially weighted average taken in log space, with
weights by elapsed time (time constant `SMOOTHING_SECONDS`) rather than by tick, so a loop
that ticks faster does not adapt faster; each sample is first clipped to within a factor
`CLIP` of the estimate. A heartbeat whose mean is dominated by one slow job therefore moves
the estimate by at most ~1.4× in the 5 s it is reported (about 3 ^ (5/15)), and a real,
lasting change is followed within a minute. The first sample is taken as is. Nothing measured (an idle queue) changes
nothing: a queue that has run jobs knows how fast a replica is when its next burst lands;
the estimates are rebuilt from the first heartbeats after the loop restarts.

**The deadline.** The objective is per job: done within `drain_within` of becoming ready.
For a burst all jobs became ready together, so the whole backlog (ready + running) must
clear before the oldest ready job's deadline: ``remaining = drain_within -
oldest_ready_age``, but at least `MIN_REMAINING` of the objective (a burst that is already
late asks for up to 4× the replicas, not unboundedly many). Counting the objective from
*now* instead (a receding horizon) would grant the full objective again at every
scale-down and finish bursts late. Then::

    replicas = ceil(backlog / (capacity × remaining))

never more than ``ceil(backlog / concurrency)`` (every job running at once: more replicas
cannot finish sooner), and then bounded by the decision's min/max and useful-replica ceiling,
with its scale-down window, like the default rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.scaler.limits import ceil_div, ceil_float, plural

if TYPE_CHECKING:
    from shoal.scaler.decision import Observation, Policy

SMOOTHING_SECONDS = 15.0
CLIP = 3.0
SATURATION_SECONDS = 10.0
MIN_REMAINING = 0.25
MIN_SECONDS_PER_RUN = 1e-6  # a no-op handler still takes some time: keeps logs and ratios finite
# The most ready jobs a tick counts for the drain rule. Counting is an index walk bounded by
# LIMIT; past this the count is a lower bound, which can scale up but never down.
COUNT_LIMIT = 1_000_000


@dataclass(frozen=True, kw_only=True)
class Speed:
    """The smoothed speed of a replica, kept between ticks (see the module docstring).

    `seconds_per_run`: mean handler duration (s). `replica_rate`: jobs/s one saturated
    replica completed. `updated_at`: the last tick's time. `saturated_since`: since when every
    tick has seen the queue saturated (None: the last tick did not).
    """

    seconds_per_run: float | None = None
    replica_rate: float | None = None
    updated_at: float | None = None
    saturated_since: float | None = None


def _blend(old: float | None, sample: float, weight: float) -> float:
    if old is None:
        return sample
    sample = min(max(sample, old / CLIP), old * CLIP)
    return math.exp(math.log(old) + weight * (math.log(sample) - math.log(old)))


def observe(speed: Speed, obs: Observation, policy: Policy) -> Speed:
    """`speed` updated with this tick's measurements."""
    now = obs.now
    elapsed = 0.0 if speed.updated_at is None else max(now - speed.updated_at, 0.0)
    weight = 1.0 - math.exp(-elapsed / SMOOTHING_SECONDS)
    duration = speed.seconds_per_run
    if obs.seconds_per_run is not None:
        duration = _blend(duration, max(obs.seconds_per_run, MIN_SECONDS_PER_RUN), weight)
    rate = speed.replica_rate
    saturated = speed.saturated_since is not None and now - speed.saturated_since >= SATURATION_SECONDS
    if saturated and obs.reporting > 0 and obs.throughput:
        rate = _blend(rate, obs.throughput / obs.reporting, weight)
    waiting = obs.ready > 0 or obs.ready_capped
    full = waiting and obs.ready + obs.running >= obs.current_replicas * policy.concurrency
    since = (speed.saturated_since if speed.saturated_since is not None else now) if full else None
    return Speed(seconds_per_run=duration, replica_rate=rate, updated_at=now, saturated_since=since)


def capacity(speed: Speed, policy: Policy) -> tuple[float, str] | None:
    """Jobs/s one replica completes, and where the figure comes from; None while unknown."""
    by_duration = policy.concurrency / speed.seconds_per_run if speed.seconds_per_run else None
    if by_duration is not None and (speed.replica_rate is None or by_duration <= speed.replica_rate):
        assert speed.seconds_per_run is not None
        return by_duration, f"{policy.concurrency} at once, {_duration(speed.seconds_per_run)} per job"
    if speed.replica_rate:
        return speed.replica_rate, "measured on busy replicas"
    return None


def need(obs: Observation, policy: Policy, speed: Speed) -> tuple[int, str] | None:
    """Replicas for the drain objective and the sentence explaining them; None when the policy
    has no objective or a replica's speed is not known yet (the caller's default rule applies)."""
    if policy.drain_within is None:
        return None
    known = capacity(speed, policy)
    if known is None:
        return None
    per_replica, source = known
    objective = policy.drain_within
    waited = obs.oldest_ready_age if obs.ready > 0 and obs.oldest_ready_age else 0.0
    remaining = max(objective - waited, objective * MIN_REMAINING)
    backlog = obs.ready + obs.running
    jobs = f"≥{backlog:,}" if obs.ready_capped else f"{backlog:,}"
    rate = f"{per_replica:,.3g}" if per_replica < 1000 else f"{per_replica:,.0f}"
    if backlog == 0:
        return 0, f"no jobs to drain (objective {_duration(objective)}, {rate}/s per replica)"
    n = ceil_float(backlog / (per_replica * remaining))
    why = f"{jobs} jobs at {rate}/s per replica ({source}) drain within {_duration(remaining)} with "
    all_at_once = ceil_div(backlog, policy.concurrency)
    if n > all_at_once:
        n = all_at_once
        why += f"{plural(n, 'replica')} running every job at once"
    else:
        why += f"{plural(n, 'replica')} (~{_duration(backlog / (n * per_replica))})"
    if waited >= 1:
        why += f"; objective {_duration(objective)}, oldest ready job waited {_duration(waited)}"
    return n, why


def count_cap(policy: Policy, speed: Speed, default: int) -> int:
    """How many ready jobs a tick should count: beyond ``max_replicas × capacity × drain_within``
    the drain rule's answer is the maximum anyway. `default` when the rule does not apply."""
    if policy.drain_within is None:
        return default
    known = capacity(speed, policy)
    if known is None:
        return default
    enough = math.ceil(min(policy.max_replicas * known[0] * policy.drain_within, float(COUNT_LIMIT))) + 1
    return max(default, min(enough, COUNT_LIMIT))


def _duration(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.0f} s"
    return f"{seconds:.2g} s" if seconds >= 0.1 else f"{seconds * 1000:.2g} ms"
