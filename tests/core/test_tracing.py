"""The producer's side of tracing (shoal.tracing, sql/009_trace_context.sql): what enqueue stores,
what the claims hand back, what the JSON logs say, and Shoal without the `otel` extra. The
worker's spans: tests/worker/test_tracing_worker.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from shoal import client, queries, queues, tracing
from shoal.client import NewJob
from shoal.logs import JsonFormatter

TRACE_ID, SPAN_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@contextmanager
def in_span(trace_state: TraceState | None = None) -> Iterator[None]:
    """A current span as an instrumented caller (here, with no SDK) would have one."""
    ctx = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1), trace_state=trace_state)
    with trace.use_span(NonRecordingSpan(ctx)):
        yield


async def stored(conn: asyncpg.Connection, ids: list[int]) -> list[str | None]:
    rows = dict(await conn.fetch("SELECT id, trace_context FROM shoal.jobs WHERE id = ANY($1)", ids))
    return [rows[i] for i in ids]


def test_current_context_is_the_w3c_traceparent_then_the_tracestate() -> None:
    assert tracing.current_context() is None
    with in_span():
        assert tracing.current_context() == TRACEPARENT
        assert tracing.log_ids() == (f"{TRACE_ID:032x}", f"{SPAN_ID:016x}")
    with in_span(TraceState([("vendor", "a:1"), ("other", "x")])):
        assert tracing.current_context() == TRACEPARENT + " vendor=a:1,other=x"
    assert tracing.log_ids() is None


@pytest.mark.parametrize("text", [
    TRACEPARENT, TRACEPARENT + " vendor=v", "  " + TRACEPARENT + "  ",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",  # a later version's extra field
])
def test_parse_accepts_what_w3c_allows(text: str) -> None:
    ctx = tracing.parse(text)
    assert (ctx.trace_id, ctx.span_id, ctx.is_remote, int(ctx.trace_flags)) == (TRACE_ID, SPAN_ID, True, 1)


@pytest.mark.parametrize("text", [
    "", "not-a-trace", TRACEPARENT.upper(), TRACEPARENT[:-1],
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid (all zero) trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # the invalid span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
    TRACEPARENT + "-extra",  # version 00 has exactly four fields
])
def test_parse_refuses_a_malformed_trace_context(text: str) -> None:
    assert tracing.parse(text) is None


async def test_every_enqueue_path_stores_the_current_context(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "t")
    n = client.COPY_MIN_BATCH
    with in_span(TraceState([("vendor", "v")])):
        one = await client.enqueue(conn, "t", "a")
        unique = await client.enqueue(conn, "t", "a", unique_key="k")
        small = await client.enqueue_many(conn, [NewJob("t", "a"), NewJob("t", "b", priority=2)])
        copied = await client.enqueue_many(conn, [NewJob("t", "c", {"i": i}) for i in range(n)])
        async with conn.transaction():  # COPY inside the caller's transaction
            copied_tx = await client.enqueue_many(conn, [NewJob("t", "d") for _ in range(n)])
    expected = TRACEPARENT + " vendor=v"
    traced = [one, unique, *small, *copied, *copied_tx]
    assert set(await stored(conn, traced)) == {expected}
    # Without a current span: NULL, on every path.
    plain = [await client.enqueue(conn, "t", "a"), *await client.enqueue_many(conn, [NewJob("t", "a")]),
             *await client.enqueue_many(conn, [NewJob("t", "c")] * n)]
    assert set(await stored(conn, plain)) == {None}
    # The COPY path's other columns are still right next to the new one.
    row = await conn.fetchrow("SELECT j.payload, j.task, j.priority, j.max_attempts = q.max_attempts AS dflt "
                              "FROM shoal.jobs j JOIN shoal.queues q ON q.name = j.queue WHERE j.id = $1", copied[-1])
    assert (json.loads(row["payload"]), row["task"], row["priority"], row["dflt"]) == ({"i": n - 1}, "c", 0, True)


async def test_sql_producers_pass_a_traceparent_and_old_calls_still_work(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "s")
    named = await conn.fetchval("SELECT shoal.enqueue('s', 't', trace_context => $1)", TRACEPARENT)
    positional = await conn.fetchval("SELECT shoal.enqueue('s', 't', '{}', 0, NULL, NULL, NULL, $1)", TRACEPARENT)
    old = await conn.fetchval("SELECT shoal.enqueue('s', 't', '{}', 0, NULL, NULL, NULL)")  # 7 arguments
    many = [r["id"] for r in await conn.fetch(
        "SELECT id FROM shoal.enqueue_many(ARRAY['s','s'], ARRAY['t','t'], NULL, NULL, NULL, NULL, NULL, $1)",
        TRACEPARENT)]
    many_old = [r["id"] for r in await conn.fetch(
        "SELECT id FROM shoal.enqueue_many(ARRAY['s'], ARRAY['t'], NULL, NULL, NULL, NULL, NULL)")]
    # Stored as given: the worker, not the database, decides whether it is usable.
    bad = await conn.fetchval("SELECT shoal.enqueue('s', 't', trace_context => 'garbage')")
    assert await stored(conn, [named, positional, *many, old, *many_old, bad]) == [
        TRACEPARENT] * 4 + [None, None, "garbage"]


async def test_the_claims_return_the_trace_context(conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "c")
    with in_span():
        traced = await client.enqueue(conn, "c", "t", priority=1)
    plain = await client.enqueue(conn, "c", "t")
    async with conn.transaction():
        held = await conn.fetch(queries.CLAIM_HELD, "c", 10, True)
        assert [(r["id"], r["trace_context"]) for r in held] == [(traced, TRACEPARENT), (plain, None)]
        assert held[0][6] == TRACEPARENT  # the 7th column: claimer._accept reads it by position
    leased = await conn.fetch(queries.CLAIM, "c", "w1", 10, timedelta(seconds=30), False, timedelta(0))
    assert [(r["id"], r[6]) for r in leased] == [(traced, TRACEPARENT), (plain, None)]
    # The previous version's calls read the columns they always did.
    await conn.execute("UPDATE shoal.jobs SET state = 'pending'")
    old = await conn.fetch("SELECT * FROM shoal.claim_leased('c', 'w2', 10)")
    assert list(old[0].keys()) == ["id", "task", "payload", "attempts", "max_attempts", "run_at"]


def test_json_logs_carry_the_current_span() -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "hi"})
    assert "trace_id" not in json.loads(formatter.format(record))
    with in_span():
        line = json.loads(formatter.format(record))
    assert (line["trace_id"], line["span_id"]) == (f"{TRACE_ID:032x}", f"{SPAN_ID:016x}")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env={"PYTHONSAFEPATH": "1", "PATH": ""})


def test_without_the_extra_tracing_is_off_and_shoal_works() -> None:
    """`pip install shoal` without `otel`: opentelemetry cannot be imported."""
    result = _run("""
        import sys, json, logging
        sys.modules["opentelemetry"] = None  # as if it were not installed
        from shoal import tracing, client, logs
        import shoal.worker.runner
        assert not tracing.available() and not tracing.enabled()
        assert tracing.current_context() is None and tracing.log_ids() is None
        assert tracing.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is None
        assert tracing.start_job("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "q", "t", 1, 1) is None
        line = json.loads(logs.JsonFormatter().format(logging.makeLogRecord({"msg": "hi"})))
        assert "trace_id" not in line
        print("ok")
    """)
    assert result.stdout.strip() == "ok", result.stderr


def test_shoal_does_not_import_opentelemetry_itself() -> None:
    """Until the application imports it, no span or provider can exist: Shoal skips the import."""
    result = _run("""
        import sys, json, logging
        from shoal import client, logs, tracing
        import shoal.worker.runner
        assert tracing.current_context() is None and not tracing.enabled()
        logs.JsonFormatter().format(logging.makeLogRecord({"msg": "hi"}))
        assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
        assert tracing.available()  # it is installed, though
        print("ok")
    """)
    assert result.stdout.strip() == "ok", result.stderr


def test_without_a_tracer_provider_no_span_is_made() -> None:
    """The API alone (no SDK configured): its proxy provider means nobody collects spans."""
    result = _run("""
        import opentelemetry.trace
        from shoal import tracing
        assert tracing.available() and not tracing.enabled()
        assert tracing.start_job("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "q", "t", 1, 1) is None
        print("ok")
    """)
    assert result.stdout.strip() == "ok", result.stderr
