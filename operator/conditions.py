"""Status conditions: building them, summarising them into Ready, and spotting transitions.

Kubernetes convention: each condition is a cause (DatabaseReachable, QueueDeclared, ...)
and ``Ready`` is True only when every cause is. A False cause's message names the spec
field at fault and the fix, because that is what ``kubectl describe`` shows a user.
``lastTransitionTime`` changes only when a condition's status changes, and Events are
posted only on such transitions (or a changed reason), never on every resync.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]
READY = "Ready"

# Queue causes.
SPEC_VALID = "SpecValid"
DATABASE_REACHABLE = "DatabaseReachable"
QUEUE_DECLARED = "QueueDeclared"
DEPLOYMENT_AVAILABLE = "DeploymentAvailable"
# CronJob causes.
SCHEDULE_VALID = "ScheduleValid"
QUEUE_FOUND = "QueueFound"


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str = ""

    @classmethod
    def true(cls, type_: str, reason: str, message: str = "") -> Condition:
        return cls(type_, "True", reason, message)

    @classmethod
    def false(cls, type_: str, reason: str, message: str) -> Condition:
        return cls(type_, "False", reason, message)

    @classmethod
    def unknown(cls, type_: str, reason: str, message: str) -> Condition:
        return cls(type_, "Unknown", reason, message)


def ready(causes: Sequence[Condition]) -> Condition:
    """Ready summarises the causes: the first False (else Unknown) one explains why not."""
    for wanted in ("False", "Unknown"):
        bad = [c for c in causes if c.status == wanted]
        if bad:
            return Condition(READY, wanted, bad[0].reason, bad[0].message)  # type: ignore[arg-type]
    return Condition.true(READY, "Reconciled", "all conditions are met")


def with_ready(causes: Sequence[Condition]) -> list[Condition]:
    """Ready first, then the causes (the order ``kubectl describe`` prints)."""
    return [ready(causes), *causes]


def to_status(conditions: Iterable[Condition], previous: Sequence[Mapping[str, Any]] | None, now: str,
              generation: int | None) -> list[dict[str, Any]]:
    """Conditions as stored in ``.status.conditions``, keeping a condition's
    ``lastTransitionTime`` while its status stays the same."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    out = []
    for c in conditions:
        old = before.get(c.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == c.status else None
        entry: dict[str, Any] = {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
                                 "lastTransitionTime": since or now}
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: worth an Event."""

    condition: Condition
    previous_status: str | None

    @property
    def event_type(self) -> str:
        return "Normal" if self.condition.status == "True" else "Warning"

    @property
    def reason(self) -> str:
        return self.condition.reason

    @property
    def message(self) -> str:
        text = f"{self.condition.type}={self.condition.status}"
        return f"{text}: {self.condition.message}" if self.condition.message else text


def transitions(conditions: Iterable[Condition], previous: Sequence[Mapping[str, Any]] | None) -> list[Transition]:
    """Conditions whose status or reason differ from the stored ones. On first sight only a
    False one is news; Ready is left out, the cause behind it already speaks."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    out = []
    for c in conditions:
        if c.type == READY:
            continue
        old = before.get(c.type)
        if old is None:
            # First sight: only a failure is news (success shows up as the actions taken).
            if c.status == "False":
                out.append(Transition(c, None))
        elif old.get("status") != c.status or old.get("reason") != c.reason:
            out.append(Transition(c, str(old.get("status"))))
    return out
