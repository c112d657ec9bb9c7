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
