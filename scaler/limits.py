"""The useful-replica ceiling: the most replicas a queue's global limits can keep busy.

Pure, like `shoal.scaler.decision` (which re-exports `useful_replicas`), with the small
arithmetic helpers the decision and `shoal.scaler.drain` share.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.scaler.decision import Observation, Policy

# Float noise guard for ceil(): 3.0000000000004 useful replicas is 3, not 4.
EPSILON = 1e-9
# Bound for float ratios before ceil(), so a near-zero throughput cannot overflow an int.
HUGE = 1_000_000_000


def ceil_div(numerator: int, denominator: int) -> int:
    """Exact integer ceiling division (no float rounding on large backlogs)."""
    return -(-numerator // denominator)


def ceil_float(value: float) -> int:
    """Ceil of a non-negative float ratio, at least 1 and at most HUGE."""
    return max(1, math.ceil(min(value, float(HUGE)) - EPSILON))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def useful_replicas(obs: Observation, policy: Policy,
                    seconds_per_run: float | None = None) -> tuple[int | None, str]:
    """The most replicas the queue's global limits can keep busy, and why; (None, "") if unlimited.

    * Concurrency cap: at most ``concurrency_limit`` jobs run at once across all pods, so
      ``ceil(concurrency_limit / concurrency)`` pods are enough to run all of them.
    * Rate limit: useful pods = ``ceil(rate × seconds_per_run / concurrency)``: at R jobs/s
      of jobs taking d seconds, R × d run at once (Little's law). `seconds_per_run` is the
      measured (smoothed) mean handler duration, defaulting to the observation's. When it
      is unknown but throughput and running jobs are, the duration is estimated as
      running / throughput; equivalently a busy pod completes ``concurrency × throughput /
      running`` jobs/s and the cap is the rate divided by that per-pod share. This is
      deliberately *not* ``throughput / current_replicas``: that ratio falls whenever pods
      are throttled or short of work, and dividing the rate by it would let the cap creep up
      by a pod per tick while the rate limit is already saturated. With neither, the cap is
      ``ceil(rate_limit / concurrency)``, which assumes jobs take about a second: an upper
      bound for faster jobs, and for slower ones a cautious start that is replaced by the
      measured cap as soon as jobs complete.
    """
    caps: list[tuple[int, str]] = []
    if policy.concurrency_limit is not None:
        n = ceil_div(policy.concurrency_limit, policy.concurrency)
        caps.append(
            (
                n,
                f"concurrency limit {policy.concurrency_limit} fills "
                f"{plural(n, 'replica')} at {policy.concurrency}/replica",
            )
        )
    if policy.rate_limit is not None:
        rate = policy.rate_limit
        duration = seconds_per_run if seconds_per_run is not None else obs.seconds_per_run
        if duration:
            n = ceil_float(rate * duration / policy.concurrency)
            why = (f"rate limit {rate:g}/s of {duration:.3g} s jobs fills {plural(n, 'replica')} "
                   f"at {policy.concurrency}/replica")
        elif obs.throughput and obs.running > 0:
            per_pod = policy.concurrency * obs.throughput / obs.running
            # rate / per_pod, arranged so a tiny throughput cannot underflow to a zero divisor.
            n = ceil_float(rate * obs.running / (policy.concurrency * obs.throughput))
            why = f"rate limit {rate:g}/s at {per_pod:.3g}/s per busy replica fills {plural(n, 'replica')}"
        else:
            n = ceil_float(rate / policy.concurrency)
            why = (
                f"rate limit {rate:g}/s with job duration not yet measured allows "
                f"{plural(n, 'replica')} at {policy.concurrency}/replica"
            )
        caps.append((n, why))
    if not caps:
        return None, ""
    return min(caps, key=lambda cap: cap[0])
