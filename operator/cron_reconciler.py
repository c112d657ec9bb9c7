"""Running one CronJob resource: validate, resolve its Queue and database, fire due ticks.

Called every ``cron_interval`` seconds per CronJob (a kopf timer). Most calls find no tick
due and return without touching Kubernetes or Postgres: the newest tick this process has
seen handled is remembered in the resource's memo. Firing itself is exactly-once through
Postgres (see `shoal.operator.ticks`), so any number of operator replicas may run this.

Where catch-up starts (``since``): the newest tick recorded in Postgres, else the
``lastScheduleTime`` in status (ticks are pruned from Postgres after 7 days; a monthly
schedule must not fire its last tick again), else the CronJob's creation time (a new
CronJob never fires ticks from before it existed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.backoff import loop_delay
from shoal.errors import ValidationError
from shoal.names import task_name
from shoal.operator.conditions import (
    DATABASE_REACHABLE,
    QUEUE_FOUND,
    SCHEDULE_VALID,
    SPEC_VALID,
    Condition,
    to_status,
    transitions,
    with_ready,
)
from shoal.operator.cron import due_ticks, format_time, latest_tick, parse_schedule, parse_time
from shoal.operator.databases import Databases
from shoal.operator.problems import Problem
from shoal.operator.queue_spec import parse_queue_spec
from shoal.operator.sources import database_pool, database_url, referenced_queue
from shoal.operator.ticks import TickJob, fire_tick, tick_history

Event = tuple[str, str, str]


@dataclass
class CronMemo:
    """What one operator process remembers about one CronJob between timer calls."""

    handled_through: dt.datetime | None = None
    checked_at: float = float("-inf")
    spec_key: str = ""
    failures: int = 0
    retry_after: float = float("-inf")  # after a failure: back off before the next attempt


@dataclass
class CronResult:
    status: dict[str, Any] | None  # None: nothing to change
    retry: Problem | None = None
    events: list[Event] = field(default_factory=list)


def cron_name(namespace: str, name: str) -> str:
    """The CronJob's key in ``shoal.cron_ticks`` (unique across namespaces)."""
    return f"{namespace}/{name}"


def _validate(spec: Mapping[str, Any]) -> list[Condition]:
    causes = []
    try:
        task_name(spec.get("task"), "spec.task")
        causes.append(Condition.true(SPEC_VALID, "Valid", "the spec is valid"))
    except ValidationError as exc:
        causes.append(Condition.false(SPEC_VALID, "InvalidSpec", str(exc)))
    return causes


async def reconcile_cron(*, name: str, namespace: str, spec: Mapping[str, Any], status: Mapping[str, Any],
                         created: str | None, generation: int | None, databases: Databases, memo: CronMemo,
                         now: dt.datetime, monotonic: float, resync: float) -> CronResult:
    previous = status.get("conditions") or []
    stamp = format_time(now) or ""
    spec_key = repr(sorted((k, repr(v)) for k, v in spec.items()))
    causes = _validate(spec)
    try:
        schedule = parse_schedule(spec.get("schedule", ""), spec.get("timeZone") or "UTC")
        causes.append(Condition.true(SCHEDULE_VALID, "Valid", f"next tick at {format_time(schedule.next_after(now))}"))
    except ValidationError as exc:
        reason = "UnknownTimeZone" if exc.field == "spec.timeZone" else "InvalidSchedule"
        causes.append(Condition.false(SCHEDULE_VALID, reason, str(exc)))
        causes += [Condition.unknown(t, "ScheduleInvalid", "not checked while the schedule is invalid")
                   for t in (QUEUE_FOUND, DATABASE_REACHABLE)]
        return _finish(causes, previous, stamp, generation, {"nextScheduleTime": None}, [], None, status)

    if memo.spec_key == spec_key and monotonic < memo.retry_after:
        return CronResult(status=None)
    due_now = latest_tick(schedule, now)
    if (memo.spec_key == spec_key and monotonic - memo.checked_at < resync
            and (due_now is None or (memo.handled_through is not None and due_now <= memo.handled_through))):
        return CronResult(status=None)

    result: dict[str, Any] = {"nextScheduleTime": format_time(schedule.next_after(now))}
    events: list[Event] = []
    retry: Problem | None = None
    try:
        queue_ref = (spec.get("queueRef") or {}).get("name", "")
        queue = await referenced_queue(namespace, queue_ref)
        try:
            queue_spec = parse_queue_spec(namespace, queue_ref, queue.get("spec") or {})
        except ValidationError as exc:
            raise Problem(QUEUE_FOUND, "QueueInvalid", f"spec.queueRef.name: Queue {queue_ref!r} is invalid ({exc}); "
                          "fix that Queue") from None
        queue_name = queue_spec.queue_name
        causes.append(Condition.true(QUEUE_FOUND, "Found", f"enqueues into queue {queue_name!r}"))
        where = f"Queue {queue_ref}: "
        url = await database_url(namespace, queue_spec.database_secret_ref, where=where)
        pool = await database_pool(databases, url, where=where)
        causes.append(Condition.true(DATABASE_REACHABLE, "Connected", "the database is reachable"))
        key = cron_name(namespace, name)
        history = await tick_history(pool, key)
        if not spec.get("suspend", False) and all(c.status == "True" for c in causes):
            since = max(t for t in (history.last_tick, parse_time(status.get("lastScheduleTime")),
                                    parse_time(created), now - dt.timedelta(days=366)) if t is not None)
            job = TickJob(queue_name, str(spec["task"]), spec.get("payload") or {}, int(spec.get("priority", 0)))
            forbid = spec.get("concurrencyPolicy", "Allow") == "Forbid"
            async with pool.acquire() as conn:
                for tick in due_ticks(schedule, since=since, now=now,
                                      deadline_seconds=spec.get("startingDeadlineSeconds")):
                    fired = await fire_tick(conn, key, tick, job, forbid_overlap=forbid)
                    if fired.outcome == "enqueued":
                        events.append(("Normal", "Enqueued", f"tick {format_time(tick)}: job {fired.job_id} "
                                                             f"enqueued into {queue_name!r}"))
                    elif fired.outcome == "skipped-forbid":
                        events.append(("Normal", "TickSkipped", f"tick {format_time(tick)} skipped: the previous "
                                                                "tick's job is still pending or running "
                                                                "(concurrencyPolicy: Forbid)"))
            history = await tick_history(pool, key)
        if history.last_job_tick is not None:
            result["lastScheduleTime"] = format_time(history.last_job_tick)
            result["lastJobId"] = history.last_job_id
        memo.handled_through = max(filter(None, (history.last_tick, due_now)), default=None)
        memo.checked_at, memo.spec_key, memo.failures = monotonic, spec_key, 0
    except Problem as problem:
        retry = problem
        causes.append(problem.condition())
    except Exception as exc:  # enqueue refused (e.g. the queue is not declared yet): report, retry
        retry = Problem(QUEUE_FOUND, "EnqueueFailed", f"spec.queueRef.name: enqueueing failed ({exc}); check the "
                        "Queue's conditions; retrying")
        causes.append(retry.condition())
    if retry is not None:
        memo.checked_at, memo.spec_key = float("-inf"), spec_key
        memo.failures += 1
        memo.retry_after = monotonic + loop_delay(memo.failures, base=1.0, cap=30.0)
    for t in (QUEUE_FOUND, DATABASE_REACHABLE):
        if not any(c.type == t for c in causes):
            causes.append(Condition.unknown(t, "NotChecked", "waiting for the conditions above"))
    return _finish(causes, previous, stamp, generation, result, events, retry, status)


def _finish(causes: list[Condition], previous: Any, now: str, generation: int | None, result: dict[str, Any],
            events: list[Event], retry: Problem | None, status: Mapping[str, Any]) -> CronResult:
    conditions = with_ready(causes)
    events = [*events, *((t.event_type, t.reason, t.message) for t in transitions(conditions, previous))]
    result["conditions"] = to_status(conditions, previous, now, generation)
    if generation is not None:
        result["observedGeneration"] = generation
    changed = {k: v for k, v in result.items() if status.get(k) != v}
    # lastTransitionTime is kept, so unchanged conditions compare equal: no needless PATCH.
    return CronResult(status=changed or None, retry=retry, events=events)
