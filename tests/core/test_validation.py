"""One set of rules for a job, in Python (core/names.py, core/validation.py) and in SQL
(sql/005_validation.sql): the same inputs go through `shoal.client` and through plain SQL, and
both must accept or refuse them alike, naming the same field with the same message.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shoal import client, names, producer, queues, validation
from shoal.client import NewJob
from shoal.errors import UnknownQueueError, ValidationError

ROOT = Path(__file__).resolve().parents[2]
SQL_FILE = ROOT / "sql" / "005_validation.sql"
SQL_ONE = "SELECT shoal.enqueue($1, $2, '{}'::jsonb, $3, $4, $5, $6)"
SQL_MANY = "SELECT id FROM shoal.enqueue_many($1, $2, NULL, $3, $4, $5, $6)"
GOOD_QUEUES = ["v", "prod.emails", "a", "a" * 128, "a-b_c.9"]
BIG = max(client.COPY_MIN_BATCH, 1_200)

# (id, NewJob fields beyond queue "v" and task "t", the field at fault or None when valid)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("defaults", {}, None),
    ("queue-dotted", {"queue": "prod.emails"}, None),
    ("queue-1-char", {"queue": "a"}, None),
    ("queue-128", {"queue": "a" * 128}, None),
    ("queue-punctuation", {"queue": "a-b_c.9"}, None),
    ("task-underscore", {"task": "_private"}, None),
    ("task-punctuation", {"task": "Send.mail:v2-b"}, None),
    ("task-200", {"task": "t" * 200}, None),
    ("priority-min", {"priority": -32768}, None),
    ("priority-max", {"priority": 32767}, None),
    ("max-attempts-1", {"max_attempts": 1}, None),
    ("max-attempts-max", {"max_attempts": 2**31 - 1}, None),
    ("unique-key", {"unique_key": "k"}, None),
    ("unique-key-space", {"unique_key": " "}, None),
    ("run-at-min", {"run_at": datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)}, None),
    ("run-at-max", {"run_at": datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)}, None),
    ("run-at-offset", {"run_at": datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))}, None),
    ("queue-null", {"queue": None}, "queue"),
    ("queue-empty", {"queue": ""}, "queue"),
    ("queue-space", {"queue": "Bad Name"}, "queue"),
    ("queue-upper", {"queue": "Q"}, "queue"),
    ("queue-leading-dash", {"queue": "-a"}, "queue"),
    ("queue-trailing-dash", {"queue": "a-"}, "queue"),
    ("queue-129", {"queue": "a" * 129}, "queue"),
    ("queue-newline", {"queue": "emails\n"}, "queue"),
    ("queue-non-ascii", {"queue": "é"}, "queue"),
    ("queue-quote", {"queue": "it's"}, "queue"),
    ("queue-backslash", {"queue": "a\\b"}, "queue"),
    ("task-null", {"task": None}, "task"),
    ("task-empty", {"task": ""}, "task"),
    ("task-space", {"task": "a b"}, "task"),
    ("task-digit-first", {"task": "1a"}, "task"),
    ("task-201", {"task": "t" * 201}, "task"),
    ("task-newline", {"task": "t\n"}, "task"),
    ("task-non-ascii", {"task": "é"}, "task"),
    ("max-attempts-0", {"max_attempts": 0}, "max_attempts"),
    ("max-attempts-negative", {"max_attempts": -1}, "max_attempts"),
    ("unique-key-empty", {"unique_key": ""}, "unique_key"),
    ("queue-before-task", {"queue": "Q", "task": "a b"}, "queue"),
    ("task-before-priority", {"task": "", "max_attempts": 0}, "task"),
]
# smallint[] cannot carry these to enqueue_many, and a NULL priority there is the default.
SINGLE_ONLY = [
    ("priority-null", {"priority": None}, "priority"),
    ("priority-too-high", {"priority": 40000}, "priority"),
    ("priority-too-low", {"priority": -32769}, "priority"),
]


def ids(cases: list[tuple[str, dict[str, Any], str | None]]) -> list[str]:
    return [c[0] for c in cases]


def job(fields: dict[str, Any]) -> NewJob:
    return NewJob(**{"queue": "v", "task": "t", **fields})


def sql_args(j: NewJob) -> list[Any]:
    return [j.queue, j.task, j.priority, j.run_at, j.max_attempts, j.unique_key]


async def outcome(action: Any, jobs: int | None = None) -> tuple[str, str] | None:
    """None if `action` succeeded, else the ValidationError's field and message (the database's
    refusals translated as the client does, `jobs` being the size of an enqueue_many call)."""
    try:
        with validation.translate_errors(jobs):
            await action
    except ValidationError as exc:
        return exc.field, str(exc)
    return None


@pytest.fixture
async def vconn(conn: asyncpg.Connection) -> asyncpg.Connection:
    for name in GOOD_QUEUES:
        await queues.declare_queue(conn, name)
    return conn


async def count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM shoal.jobs"))


# -- the rules are written once ------------------------------------------------------------------
async def test_sql_patterns_are_the_python_ones(vconn: asyncpg.Connection) -> None:
    text = SQL_FILE.read_text()

    def literal(function: str) -> str:
        m = re.search(rf"FUNCTION shoal\.{function}\(\).*?SELECT '(.*?)'::text", text, re.S)
        assert m, function
        return m.group(1)

    assert literal("queue_name_pattern") == names.QUEUE_NAME.pattern
    assert literal("task_name_pattern") == names.TASK_NAME.pattern
    assert re.search(rf"task_name_max_length\(\) RETURNS integer\s.*?SELECT {names.TASK_NAME_MAX_LENGTH} ", text, re.S)
    live = await vconn.fetchrow("SELECT shoal.queue_name_pattern() AS q, shoal.task_name_pattern() AS t, "
                                "shoal.task_name_max_length() AS n")
    assert (live["q"], live["t"], live["n"]) == (names.QUEUE_NAME.pattern, names.TASK_NAME.pattern,
                                                 names.TASK_NAME_MAX_LENGTH)
    # The other copies of the queue pattern: shoal.queues' CHECK and the Queue CRD.
    assert f"'{names.QUEUE_NAME.pattern}'" in (ROOT / "sql" / "001_schema.sql").read_text()
    assert f"'{names.QUEUE_NAME.pattern}'" in (ROOT / "crds" / "queue.yaml").read_text()


async def test_enqueue_functions_keep_their_signatures(vconn: asyncpg.Connection) -> None:
    """Clients and workers of the previous version call them."""
    rows = await vconn.fetch("SELECT p.proname, pg_get_function_arguments(p.oid) AS args, "
                             "pg_get_function_result(p.oid) AS result FROM pg_proc p "
                             "WHERE p.pronamespace = 'shoal'::regnamespace "
                             "AND p.proname IN ('enqueue', 'enqueue_many', 'enqueue_reserve')")
    got = {r["proname"]: (r["args"], r["result"]) for r in rows}
    assert got == {
        "enqueue": ("queue text, task text, payload jsonb DEFAULT '{}'::jsonb, priority integer DEFAULT 0, "
                    "run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, "
                    "max_attempts integer DEFAULT NULL::integer, unique_key text DEFAULT NULL::text, "
                    "trace_context text DEFAULT NULL::text", "bigint"),  # sql/009: a trailing default
        "enqueue_many": ("queues text[], tasks text[], payloads jsonb[], priorities smallint[], "
                         "run_ats timestamp with time zone[], max_attemptss integer[], unique_keys text[], "
                         "trace_context text DEFAULT NULL::text", "TABLE(id bigint, created boolean)"),
        "enqueue_reserve": ("queues text[], n integer", "TABLE(ids bigint[], default_run_at timestamp with "
                            "time zone, queue_names text[], queue_max_attempts integer[])"),
    }


# -- the same inputs through Python and SQL --------------------------------------------------------
@pytest.mark.parametrize(("name", "fields", "field"), CASES + SINGLE_ONLY, ids=ids(CASES + SINGLE_ONLY))
async def test_one_job_python_and_sql_agree(vconn: asyncpg.Connection, name: str, fields: dict[str, Any],
                                            field: str | None) -> None:
    j = job(fields)
    py = await outcome(client.enqueue(vconn, j.queue, j.task, None, priority=j.priority, run_at=j.run_at,
                                      max_attempts=j.max_attempts, unique_key=j.unique_key))
    sql = await outcome(vconn.fetchval(SQL_ONE, *sql_args(j)))
    assert py == sql
    assert (py and py[0]) == field
    added = 2 - bool(j.unique_key)  # the second enqueue of a live unique key returns the first job
    assert await count(vconn) == (added if field is None else 0)


@pytest.mark.parametrize(("name", "fields", "field"), CASES, ids=ids(CASES))
async def test_a_batch_python_and_sql_agree(vconn: asyncpg.Connection, name: str, fields: dict[str, Any],
                                            field: str | None) -> None:
    """The job at fault is the second: Python names jobs[1].x, SQL xs[2], translated alike."""
    jobs = [job({}), job(fields)]
    py = await outcome(client.enqueue_many(vconn, jobs))
    columns = [list(c) for c in zip(*(sql_args(j) for j in jobs), strict=True)]
    sql = await outcome(vconn.fetch(SQL_MANY, *columns), 2)
    assert py == sql
    assert (py and py[0]) == (field and f"jobs[1].{field}")
    added = 4 - bool(jobs[1].unique_key)
    assert await count(vconn) == (added if field is None else 0)


async def test_run_at_beyond_what_python_and_the_clients_read_is_refused(vconn: asyncpg.Connection) -> None:
    """Inside years 1-9999 UTC: asyncpg cannot return a later run_at to a Python client, nor an
    earlier one, and writes datetime.min and max (which it reads for -infinity and infinity) as those."""
    for at in (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
               datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
               datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)):
        single = await outcome(client.enqueue(vconn, "v", "t", run_at=at))
        batch = await outcome(client.enqueue_many(vconn, [NewJob("v", "t"), NewJob("v", "t", run_at=at)]))
        assert single and single[0] == "run_at" and "out of range: use a timezone-aware time" in single[1]
        assert batch and batch[0] == "jobs[1].run_at"
        if at.utcoffset() == timedelta(0):  # asyncpg sends these two as -infinity and infinity
            assert (await outcome(vconn.fetchval(SQL_ONE, "v", "t", 0, at, None, None)) or "")[0] == "run_at"
    for at in ("infinity", "-infinity", "10000-01-01 00:00:00+00", "0001-01-01 00:00:00+00 BC",
               "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"):
        with pytest.raises(ValidationError, match="run_at: run_at .* is out of range") as err, \
                validation.translate_errors():
            await vconn.fetchval("SELECT shoal.enqueue('v', 't', run_at => $1::text::timestamptz)", at)
        with pytest.raises(ValidationError) as err, validation.translate_errors(2):
            await vconn.fetch("SELECT * FROM shoal.enqueue_many('{v,v}', '{t,t}', NULL, NULL, "
                              "ARRAY[NULL, $1::text::timestamptz], NULL, NULL)", at)
        assert err.value.field == "jobs[1].run_at"
    assert await count(vconn) == 0


# -- Python values SQL cannot even express -------------------------------------------------------------
PYTHON_ONLY: list[tuple[str, dict[str, Any], str]] = [
    ("priority-true", {"priority": True}, "priority"),
    ("priority-false", {"priority": False}, "priority"),
    ("priority-str", {"priority": "5"}, "priority"),
    ("priority-float", {"priority": 1.0}, "priority"),
    ("max-attempts-true", {"max_attempts": True}, "max_attempts"),
    ("max-attempts-str", {"max_attempts": "3"}, "max_attempts"),
    ("max-attempts-too-high", {"max_attempts": 2**31}, "max_attempts"),
    ("unique-key-int", {"unique_key": 5}, "unique_key"),
    ("unique-key-nul", {"unique_key": "a\x00b"}, "unique_key"),
    ("run-at-naive", {"run_at": datetime(2030, 1, 1)}, "run_at"),
    ("run-at-str", {"run_at": "2030-01-01T00:00:00Z"}, "run_at"),
    ("run-at-date", {"run_at": date(2030, 1, 1)}, "run_at"),
    ("run-at-and-delay", {"run_at": datetime.now(UTC), "delay": 5}, "run_at"),
    ("delay-str", {"delay": "5"}, "delay"),
    ("delay-true", {"delay": True}, "delay"),
    ("delay-negative", {"delay": -1}, "delay"),
    ("delay-negative-timedelta", {"delay": timedelta(seconds=-1)}, "delay"),
    ("delay-nan", {"delay": float("nan")}, "delay"),
    ("delay-inf", {"delay": float("inf")}, "delay"),
    ("delay-1e12", {"delay": 1e12}, "delay"),
    ("delay-huge-int", {"delay": 10**400}, "delay"),
    ("delay-timedelta-max", {"delay": timedelta.max}, "delay"),
    ("payload-nul", {"payload": {"a": "x\x00y"}}, "payload"),
    ("payload-nul-key", {"payload": {"k\x00": 1}}, "payload"),
    ("payload-nul-deep", {"payload": [1, {"b": ["\x00"]}]}, "payload"),
    ("payload-nul-after-backslash", {"payload": "\\\x00"}, "payload"),
    ("payload-lone-high-surrogate", {"payload": "a\ud800b"}, "payload"),
    ("payload-lone-low-surrogate", {"payload": "\udc00"}, "payload"),
    ("payload-nan", {"payload": float("nan")}, "payload"),
    ("payload-object", {"payload": object()}, "payload"),
]


@pytest.mark.parametrize(("name", "fields", "field"), PYTHON_ONLY, ids=ids(PYTHON_ONLY))
async def test_python_values_of_the_wrong_kind_are_named(vconn: asyncpg.Connection, name: str,
                                                         fields: dict[str, Any], field: str) -> None:
    """Alone, and third in a batch (where the first two prime the fast path of `validate`)."""
    bad = job(fields)
    with pytest.raises(ValidationError) as err:
        await client.enqueue_many(vconn, [bad])
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")
    with pytest.raises(ValidationError) as err:
        await client.enqueue_many(vconn, [job({}), job({}), bad])
    assert err.value.field == f"jobs[2].{field}"
    assert await count(vconn) == 0


@pytest.mark.parametrize("payload", ["\\u0000", {"\\u0000": "\\\\u0000"}, "é😀\u2028", "\\😀", "\x01\x1f"])
async def test_payloads_that_only_look_unstorable_are_kept(vconn: asyncpg.Connection, payload: Any) -> None:
    job_id = await client.enqueue(vconn, "v", "t", payload)
    assert (await client.get_job(vconn, job_id) or {})["payload"] is not None
    assert await vconn.fetchval("SELECT payload = $1::jsonb FROM shoal.jobs WHERE id = $2",
                                validation.encode_payload(payload), job_id)


def test_accepted_delays() -> None:
    for delay in (0, 0.0, 0.5, 3, timedelta(seconds=1), 86400 * 365 * 100):
        validation.validate([NewJob("v", "t", delay=delay)])


@pytest.mark.parametrize("in_transaction", [False, True], ids=["own-transaction", "caller-transaction"])
async def test_copy_path_refuses_a_nul_payload(vconn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
                                               in_transaction: bool) -> None:
    async def no_insert(db: Any, batch: Any) -> list[int]:
        raise AssertionError("the batch took the INSERT path")

    monkeypatch.setattr(producer, "_enqueue_insert", no_insert)
    at = BIG - 7  # in the last COPY chunk: the rows before it were already sent
    jobs = [NewJob("v", "t", {"i": i}) for i in range(BIG)]
    jobs[at] = NewJob("v", "t", {"i": "\x00"})
    if in_transaction:
        async with vconn.transaction():
            with pytest.raises(ValidationError) as err:
                await client.enqueue_many(vconn, jobs)
            assert await count(vconn) == 0  # the caller's transaction is still usable
    else:
        with pytest.raises(ValidationError) as err:
            await client.enqueue_many(vconn, jobs)
    assert err.value.field == f"jobs[{at}].payload" and "NUL character" in str(err.value)
    assert await count(vconn) == 0 and not vconn.is_in_transaction()


# -- SQL arguments Python never sends ---------------------------------------------------------------
@pytest.mark.parametrize(("args", "field"), [
    ("NULL, '{t}', NULL, NULL, NULL, NULL, NULL", "queues"),
    ("'{v}', NULL, NULL, NULL, NULL, NULL, NULL", "tasks"),
    ("'{v,v}', '{t}', NULL, NULL, NULL, NULL, NULL", "tasks"),
    ("'{v}', '{t,t}', NULL, NULL, NULL, NULL, NULL", "tasks"),
    ("'{v,v}', '{t,t}', ARRAY['{}'::jsonb], NULL, NULL, NULL, NULL", "payloads"),
    ("'{v,v}', '{t,t}', NULL, '{1}', NULL, NULL, NULL", "priorities"),
    ("'{v,v}', '{t,t}', NULL, NULL, ARRAY[now()], NULL, NULL", "run_ats"),
    ("'{v,v}', '{t,t}', NULL, NULL, NULL, '{1,2,3}', NULL", "max_attemptss"),
    ("'{v,v}', '{t,t}', NULL, NULL, NULL, NULL, '{k}'", "unique_keys"),
    ("'{{v}}', '{{t}}', NULL, NULL, NULL, NULL, NULL", "queues"),
    ("'{v}', '{t}', NULL, '{{1}}', NULL, NULL, NULL", "priorities"),
    ("ARRAY['v', NULL], '{t,t}', NULL, NULL, NULL, NULL, NULL", "queues[2]"),
    ("'{v,v}', ARRAY['t', NULL], NULL, NULL, NULL, NULL, NULL", "tasks[2]"),
    ("'{v,v,v}', '{t,t,\"\"}', NULL, NULL, NULL, NULL, NULL", "tasks[3]"),
    ("'{v,v,v}', '{1x,t,t}', NULL, NULL, NULL, NULL, NULL", "tasks[1]"),  # the task matched once
    ("'{v,v,v}', ARRAY['t', 'u', repeat('t', 201)], NULL, NULL, NULL, NULL, NULL", "tasks[3]"),
    ("'{v,v}', '[0:1]={t,a b}', NULL, NULL, NULL, NULL, NULL", "tasks[2]"),  # elements count from 1
    ("'{ghost,v}', '{t,a b}', NULL, NULL, NULL, NULL, NULL", "tasks[2]"),  # before the unknown queue
    ("'{ghost,Bad}', '{t,t}', NULL, NULL, NULL, NULL, NULL", "queues[2]"),
])
async def test_enqueue_many_refuses_malformed_arrays(vconn: asyncpg.Connection, args: str, field: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as err:
        await vconn.fetch(f"SELECT * FROM shoal.enqueue_many({args})")  # noqa: S608 - constants above
    assert err.value.sqlstate == validation.SQLSTATE_INVALID
    assert err.value.column_name == field and str(err.value).startswith(f"{field}: ")
    assert err.value.hint
    assert await count(vconn) == 0


async def test_enqueue_many_null_optional_entries_take_the_defaults(vconn: asyncpg.Connection) -> None:
    await queues.declare_queue(vconn, "d", max_attempts=7)
    rows = await vconn.fetch("SELECT * FROM shoal.enqueue_many('{d,d}', '{t,t}', ARRAY[NULL, '{\"a\": 1}'::jsonb], "
                             "ARRAY[NULL, 3]::smallint[], ARRAY[NULL, now()], ARRAY[NULL, 2], ARRAY[NULL, 'k'])")
    jobs = await vconn.fetch("SELECT payload::text, priority, max_attempts, unique_key FROM shoal.jobs ORDER BY id")
    assert [r["created"] for r in rows] == [True, True]
    assert [tuple(j) for j in jobs] == [("{}", 0, 7, None), ('{"a": 1}', 3, 2, "k")]
    assert await vconn.fetch("SELECT * FROM shoal.enqueue_many('{}', '{}', NULL, NULL, NULL, NULL, NULL)") == []
    with pytest.raises(asyncpg.PostgresError, match='unknown queue "ghost"'):
        await vconn.fetch("SELECT * FROM shoal.enqueue_many('{v,ghost}', '{t,t}', NULL, NULL, NULL, NULL, NULL)")


@pytest.mark.parametrize(("args", "field"), [
    ("NULL, 1", "queues"), ("ARRAY['v', NULL], 1", "queues[2]"), ("'{Bad}', 1", "queues[1]"),
    ("'{v}', NULL", "n"), ("'{v}', -1", "n"),
])
async def test_enqueue_reserve_refuses_bad_arguments(vconn: asyncpg.Connection, args: str, field: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as err:
        await vconn.fetch(f"SELECT * FROM shoal.enqueue_reserve({args})")  # noqa: S608 - constants above
    assert err.value.sqlstate == validation.SQLSTATE_INVALID and err.value.column_name == field


# -- the database's refusal reaches the Python caller as a ValidationError ----------------------------
@pytest.mark.parametrize(("size", "field"), [(1, "task"), (2, "jobs[1].task")])
async def test_a_sql_refusal_is_a_validation_error_naming_the_job(vconn: asyncpg.Connection, size: int,
                                                                  field: str) -> None:
    """Past the client's own checks (as a client of another version would be). The bad job has a
    unique key, so that it goes through shoal.enqueue_many even alone: the single-job statement
    (queries.ENQUEUE_ONE) leaves the checks to the client that sends it."""
    good: validation.Row = ("v", "t", "{}", 0, None, None, None)
    bad: validation.Row = ("v", "a b", "{}", 0, None, None, "k")
    rows = [good, bad][-size:]
    with pytest.raises(ValidationError) as err:
        await producer._enqueue_insert(vconn, validation.Batch(rows, {"v"}))
    assert err.value.field == field
    assert str(err.value) == f"{field}: invalid task name 'a b': {names.TASK_HINT}"
    with pytest.raises(UnknownQueueError):
        await producer._enqueue_insert(vconn, validation.Batch([("ghost", "t", "{}", 0, None, None, None)], {"ghost"}))
    assert await count(vconn) == 0
