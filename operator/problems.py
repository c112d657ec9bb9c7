"""Why a resource cannot be reconciled right now, as a value the reconcilers turn into a
False condition and an Event.

``transient`` problems (a missing Secret, an unreachable database, a Queue not created
yet) can fix themselves without a spec change: they are retried with backoff
(`shoal.backoff.loop_delay`). The others
(an invalid cron expression, an unknown time zone) need the user to edit the spec; they
are reported and left until the spec changes (which triggers a new reconcile anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.operator.conditions import Condition


@dataclass
class Problem(Exception):
    condition_type: str
    reason: str
    message: str
    transient: bool = True

    def __str__(self) -> str:
        return self.message

    def condition(self) -> Condition:
        return Condition.false(self.condition_type, self.reason, self.message)
