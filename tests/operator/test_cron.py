"""CronJob scheduling: pure tick arithmetic (table-driven), then the exactly-once firing
transaction against a real Postgres (two concurrent firers, Forbid)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from shoal.errors import ValidationError
from shoal.operator.cron import MAX_CATCH_UP, due_ticks, format_time, latest_tick, parse_schedule, parse_time
from shoal.operator.ticks import TickJob, fire_tick, tick_history, unique_key
from shoal.queues import QueueConfig, put_queue

UTC = dt.UTC


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else dt.datetime.fromisoformat(text)


@pytest.mark.parametrize(("schedule", "zone", "after", "expected"), [
    ("*/5 * * * *", "UTC", "2024-01-01T00:03:00", "2024-01-01T00:05:00"),
    ("* * * * * */10", "UTC", "2024-01-01T00:00:01", "2024-01-01T00:00:10"),  # 6th field: seconds
    ("@hourly", "UTC", "2024-01-01T00:00:00", "2024-01-01T01:00:00"),
    ("30 7 * * *", "Europe/Berlin", "2024-01-15T00:00:00", "2024-01-15T06:30:00"),  # CET = UTC+1
    ("30 7 * * *", "Europe/Berlin", "2024-07-15T00:00:00", "2024-07-15T05:30:00"),  # CEST = UTC+2
    # Spring forward: 02:30 does not exist in Berlin on 2024-03-31; croniter fires at 03:00 CEST.
    ("30 2 * * *", "Europe/Berlin", "2024-03-30T12:00:00", "2024-03-31T01:00:00"),
    ("0 9 * * 1", "America/New_York", "2024-01-01T15:00:00", "2024-01-08T14:00:00"),
])
def test_next_tick(schedule: str, zone: str, after: str, expected: str) -> None:
    assert parse_schedule(schedule, zone).next_after(t(after)) == t(expected)


def test_fall_back_repeats_a_wall_clock_time_as_two_ticks() -> None:
    """Documented croniter behaviour: 02:30 happens twice on 2024-10-27 in Berlin; both fire."""
    s = parse_schedule("30 2 * * *", "Europe/Berlin")
    first = s.next_after(t("2024-10-26T12:00:00"))
    assert first is not None
    second = s.next_after(first)
    assert (first, second) == (t("2024-10-27T00:30:00"), t("2024-10-27T01:30:00"))


@pytest.mark.parametrize(("schedule", "zone", "field"), [
    ("61 * * * *", "UTC", "spec.schedule"),
    ("* * * *", "UTC", "spec.schedule"),
    ("*/0 * * * *", "UTC", "spec.schedule"),
    ("0 0 30 2 *", "UTC", "spec.schedule"),  # never fires
    ("* * * * *", "Mars/Olympus_Mons", "spec.timeZone"),
    ("* * * * *", "Not/AZone", "spec.timeZone"),
])
def test_invalid_schedules_name_the_field(schedule: str, zone: str, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_schedule(schedule, zone)
    assert err.value.field == field


EVERY_MINUTE = parse_schedule("* * * * *", "UTC")
NOW = t("2024-01-01T12:00:30")


@pytest.mark.parametrize(("since", "deadline", "expected"), [
    # Nothing missed: the latest tick is already handled.
    ("2024-01-01T12:00:00", None, []),
    ("2024-01-01T12:00:00", 600, []),
    # On time: the one due tick.
    ("2024-01-01T11:59:00", None, ["12:00"]),
    # Missed five ticks, no deadline: only the most recent one.
    ("2024-01-01T11:55:00", None, ["12:00"]),
    # With a deadline: every tick no older than it, oldest first; older ones skipped.
    ("2024-01-01T11:55:00", 150, ["11:58", "11:59", "12:00"]),
    ("2024-01-01T11:55:00", 3600, ["11:56", "11:57", "11:58", "11:59", "12:00"]),
    # A deadline shorter than the delay skips everything.
    ("2024-01-01T11:55:00", 10, []),
    # Exactly at the deadline still counts.
    ("2024-01-01T11:55:00", 90, ["11:59", "12:00"]),
])
def test_due_ticks(since: str, deadline: int | None, expected: list[str]) -> None:
    got = due_ticks(EVERY_MINUTE, since=t(since), now=NOW, deadline_seconds=deadline)
    assert [x.strftime("%H:%M") for x in got] == expected


def test_catch_up_is_bounded() -> None:
    every_second = parse_schedule("* * * * * *", "UTC")
    got = due_ticks(every_second, since=NOW - dt.timedelta(days=1), now=NOW, deadline_seconds=86400)
    assert len(got) == MAX_CATCH_UP and got[-1] == NOW.replace(microsecond=0)
    assert got == sorted(got)


def test_latest_tick_and_times() -> None:
    assert latest_tick(EVERY_MINUTE, t("2024-01-01T12:00:00")) == t("2024-01-01T12:00:00")  # inclusive
    assert latest_tick(EVERY_MINUTE, NOW) == t("2024-01-01T12:00:00")
    assert format_time(NOW) == "2024-01-01T12:00:30Z"
    assert parse_time("2024-01-01T12:00:30Z") == NOW
    assert parse_time(None) is None and parse_time("garbage") is None


# ---------------------------------------------------------------- firing, against Postgres

JOB = TickJob(queue="crons", task="report", payload={"a": 1}, priority=3)


async def test_each_tick_fires_once_even_when_racing(db_url: str, conn: asyncpg.Connection) -> None:
    await put_queue(conn, QueueConfig(name="crons"))
    tick = t("2024-01-01T12:00:00")
    conns = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(fire_tick(c, "ns/report", tick, JOB, forbid_overlap=False) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(r.outcome for r in results) == ["already-fired"] * 3 + ["enqueued"]
    job_id = next(r.job_id for r in results if r.outcome == "enqueued")
    row = await conn.fetchrow("SELECT queue, task, payload::text, priority, unique_key FROM shoal.jobs WHERE id = $1",
                              job_id)
    assert (row["queue"], row["task"], row["priority"]) == ("crons", "report", 3)
    assert row["unique_key"] == unique_key("ns/report", tick)
    history = await tick_history(conn, "ns/report")
    assert (history.last_tick, history.last_job_tick, history.last_job_id) == (tick, tick, job_id)
    # A restart (a fresh firer) finds the tick taken.
    again = await fire_tick(conn, "ns/report", tick, JOB, forbid_overlap=False)
    assert again.outcome == "already-fired"
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs") == 1


async def test_enqueue_failure_rolls_back_the_claim(conn: asyncpg.Connection) -> None:
    tick = t("2024-01-01T12:00:00")
    with pytest.raises(Exception, match="unknown queue"):
        await fire_tick(conn, "ns/x", tick, TickJob("undeclared", "t", {}), forbid_overlap=False)
    assert (await tick_history(conn, "ns/x")).last_tick is None  # the tick is still free
    await put_queue(conn, QueueConfig(name="undeclared"))
    assert (await fire_tick(conn, "ns/x", tick, TickJob("undeclared", "t", {}), forbid_overlap=False)).outcome \
        == "enqueued"


async def test_forbid_skips_while_the_previous_job_is_live(conn: asyncpg.Connection) -> None:
    await put_queue(conn, QueueConfig(name="crons"))
    t1, t2, t3, t4 = (t(f"2024-01-01T12:0{i}:00") for i in (1, 2, 3, 4))
    first = await fire_tick(conn, "ns/f", t1, JOB, forbid_overlap=True)
    assert first.outcome == "enqueued"
    assert (await fire_tick(conn, "ns/f", t2, JOB, forbid_overlap=True)).outcome == "skipped-forbid"  # pending
    await conn.execute("UPDATE shoal.jobs SET state = 'running' WHERE id = $1", first.job_id)
    assert (await fire_tick(conn, "ns/f", t3, JOB, forbid_overlap=True)).outcome == "skipped-forbid"  # running
    await conn.execute("UPDATE shoal.jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", first.job_id)
    fourth = await fire_tick(conn, "ns/f", t4, JOB, forbid_overlap=True)
    assert fourth.outcome == "enqueued"
    history = await tick_history(conn, "ns/f")
    assert (history.last_tick, history.last_job_tick, history.last_job_id) == (t4, t4, fourth.job_id)
    assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'crons'") == 2
    # Allow never skips.
    assert (await fire_tick(conn, "ns/a", t1, JOB, forbid_overlap=False)).outcome == "enqueued"
    assert (await fire_tick(conn, "ns/a", t2, JOB, forbid_overlap=False)).outcome == "enqueued"
