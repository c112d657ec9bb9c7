"""Rate limit spellings ("100/s", "10/m", "5/h") and their meaning."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.errors import ValidationError

_SPEC = re.compile(r"^\s*([1-9][0-9]*)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` job starts in any window of `period_seconds` (a sliding window)."""

    limit: int
    period_seconds: int

    @property
    def per_second(self) -> float:
        return self.limit / self.period_seconds

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h"}.get(self.period_seconds)
        return f"{self.limit}/{unit}" if unit else f"{self.limit}/{self.period_seconds}s"


def parse_rate_limit(spec: str, field: str = "rate_limit") -> RateLimit:
    m = _SPEC.match(spec or "")
    if not m:
        raise ValidationError(field, f"invalid rate limit {spec!r}: write N/s, N/m or N/h, e.g. '100/s' or '10/m'")
    return RateLimit(int(m.group(1)), _UNIT_SECONDS[m.group(2)])
