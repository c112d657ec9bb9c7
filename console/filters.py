"""The job browser's filters, read from a query string or a JSON body and checked at the edge.

Each bad value is a ValidationError naming its field, which the app answers with a 400: a typo
in a URL says what to fix instead of reaching the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shoal import names
from shoal.errors import ValidationError

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class JobFilter:
    """What the browser shows. `since`/`until` bound finished_at for finished states (the
    index's column) and created_at otherwise."""

    queue: str | None = None
    state: str | None = None
    task: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None
    limit: int = PAGE_SIZE

    def query(self, **changes: Any) -> dict[str, str]:
        """The non-empty filters as query parameters (for links to other pages)."""
        out = {}
        for key in ("queue", "state", "task", "since", "until", "cursor"):
            value = changes.get(key, getattr(self, key))
            if value is not None:
                out[key] = value.isoformat() if isinstance(value, datetime) else str(value)
        return out


def _text(source: Mapping[str, Any], key: str) -> str | None:
    value = source.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError(key, f"must be a string, got {names.quote(value)}")
    return value.strip() or None


def parse_time(value: str | None, field: str) -> datetime | None:
    """ISO 8601 (a date, or a date and time; UTC when no offset is given)."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(field, f"{names.quote(value)} is not a time: use ISO 8601, "
                                     "e.g. 2026-12-06 or 2026-12-06T13:45:00Z") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def parse(source: Mapping[str, Any], *, states: tuple[str, ...] = STATES) -> JobFilter:
    """A JobFilter from request parameters; ValidationError naming the first bad field."""
    queue = _text(source, "queue")
    if queue is not None:
        names.queue_name(queue, "queue")
    state = _text(source, "state")
    if state is not None and state not in states:
        raise ValidationError("state", f"unknown state {names.quote(state)}: use one of {', '.join(states)}")
    task = _text(source, "task")
    if task is not None:
        names.task_name(task, "task")
    since, until = parse_time(_text(source, "since"), "since"), parse_time(_text(source, "until"), "until")
    if since and until and since >= until:
        raise ValidationError("until", "must be later than since")
    limit_text = _text(source, "limit")
    limit = PAGE_SIZE
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
            raise ValidationError("limit", f"must be an integer from 1 to {MAX_PAGE_SIZE}")
        limit = int(limit_text)
    return JobFilter(queue, state, task, since, until, _text(source, "cursor"), limit)
