"""Cron arithmetic for the CronJob resource (pure: every function takes the time it needs).

Schedules are croniter expressions: 5 fields (minute resolution), 6 fields where the 6th is
*seconds* (``"* * * * * */5"`` is every 5 s), or nicknames such as ``@hourly``. They are
evaluated in ``spec.timeZone`` (IANA, via zoneinfo), so ``30 7 * * *`` in Europe/Berlin is
07:30 Berlin time all year. Around DST changes croniter decides, and we document what it
does: a wall-clock time skipped by spring-forward fires at the first valid time after it
(02:30 → 03:00), and one repeated by fall-back fires for both instants (02:30 CEST and
02:30 CET are two ticks an hour apart). Ticks are identified by their UTC instant.

Catch-up (what happens after the operator was down, the CronJob suspended, or the database
unreachable) follows ``startingDeadlineSeconds``:

- with a deadline, every missed tick no older than the deadline is enqueued, once each, in
  order; older ones are skipped;
- without one, only the most recent missed tick is enqueued (a long outage never floods
  the queue with a backlog of identical jobs);
- in both cases at most ``MAX_CATCH_UP`` ticks are returned (the newest ones), so a
  per-second schedule after a long outage stays bounded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from shoal.errors import ValidationError

UTC = dt.UTC
MAX_CATCH_UP = 100
_EPSILON = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Schedule:
    """A validated cron expression and the time zone it is read in."""

    expression: str
    zone: ZoneInfo

    def _iter(self, start: dt.datetime) -> croniter:
        return croniter(self.expression, start.astimezone(self.zone))

    def next_after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after ``moment`` (UTC), or None if it never fires again."""
        try:
            return _utc(self._iter(moment).get_next(dt.datetime))
        except CroniterBadDateError:
            return None

    def ticks_back(self, moment: dt.datetime) -> croniter:
        """An iterator whose ``get_prev`` walks back from ``moment`` (inclusive)."""
        return self._iter(moment + _EPSILON)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(UTC).replace(fold=0)


def parse_schedule(expression: str, time_zone: str | None = "UTC") -> Schedule:
    """Validate ``spec.schedule`` and ``spec.timeZone``; errors name the field and the fix."""
    try:
        zone = ZoneInfo(time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            "spec.timeZone",
            f"unknown time zone {time_zone!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'",
        ) from None
    text = (expression or "").strip()
    fields = text.split()
    if not text or (not text.startswith("@") and len(fields) not in (5, 6)):
        raise ValidationError(
            "spec.schedule",
            f"invalid cron expression {expression!r}: give 5 fields (minute hour day month weekday), "
            "6 fields (the 6th is seconds) or a nickname such as @hourly",
        )
    try:
        schedule = Schedule(text, zone)
        if schedule.next_after(dt.datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise ValidationError("spec.schedule", f"cron expression {expression!r} never fires; fix the "
                                  "day/month fields (e.g. there is no 30 February)")
        return schedule
    except CroniterError as exc:
        raise ValidationError(
            "spec.schedule", f"invalid cron expression {expression!r} ({exc}); e.g. '*/5 * * * *' is every "
            "5 minutes, '* * * * * */10' every 10 seconds",
        ) from None


def latest_tick(schedule: Schedule, now: dt.datetime) -> dt.datetime | None:
    """The most recent tick at or before ``now``."""
    try:
        return _utc(schedule.ticks_back(now).get_prev(dt.datetime))
    except CroniterBadDateError:
        return None


def due_ticks(schedule: Schedule, *, since: dt.datetime, now: dt.datetime,
              deadline_seconds: int | None, limit: int = MAX_CATCH_UP) -> list[dt.datetime]:
    """Ticks in ``(since, now]`` that should be enqueued now, oldest first (see module doc).

    ``since`` is the newest tick already handled (or the CronJob's creation time).
    """
    lower = since
    if deadline_seconds is not None:
        lower = max(lower, now - dt.timedelta(seconds=deadline_seconds) - _EPSILON)
    it = schedule.ticks_back(now)
    found: list[dt.datetime] = []
    want = limit if deadline_seconds is not None else 1
    while len(found) < want:
        try:
            tick = _utc(it.get_prev(dt.datetime))
        except CroniterBadDateError:
            break
        if tick <= lower:
            break
        found.append(tick)
    return sorted(found)


def format_time(value: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, as Kubernetes status fields expect."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """Read a Kubernetes timestamp (``2024-01-01T00:00:00Z``)."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
