"""Retry delays: exponential with jitter, a pure function so it is tested directly."""

from __future__ import annotations

import random


def retry_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`, after `attempt` failures (attempt >= 1).

    "Equal jitter": half the exponential delay is fixed, half random, so retries of a
    burst of failures spread out (no thundering herd) yet never come back immediately.
    """
    if attempt < 1:
        raise ValueError("attempt counts failures so far and starts at 1")
    exp = min(cap, base * (2 ** min(attempt - 1, 62)))
    r = (rng or random).random()
    return exp / 2 + r * exp / 2


def loop_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds a retrying loop (reconnect, claim, API call) waits after `failures` failures in a
    row: `base` doubling up to `cap`. No jitter: one process's loop does not herd with others'.
    Not for jobs: `retry_delay` spreads a burst of failed jobs instead."""
    if failures < 1:
        return 0.0
    return float(min(cap, base * (2 ** min(failures - 1, 62))))


class LoopBackoff:
    """The failures of one loop: `failed()` returns how long to wait, `succeeded()` resets."""

    def __init__(self, *, base: float, cap: float) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def failed(self) -> float:
        self.failures += 1
        return loop_delay(self.failures, base=self.base, cap=self.cap)

    def succeeded(self) -> None:
        self.failures = 0
