"""Tracing across a real enqueue → worker run (shoal.tracing, sql/009_trace_context.sql): the
OpenTelemetry SDK's in-memory exporter in this process, a real PostgreSQL, a real Worker."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from helpers import eventually, running_worker
from shoal import client, queues
from shoal.logs import JsonFormatter
from shoal.tasks import Job, TaskRegistry, task


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The spans finished during this test. A process has one TracerProvider: the first test sets
    it, later ones add their own exporter to it."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield spans
    spans.shutdown()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """JSON log lines of the `tracing.handler` logger, formatted as they are written."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tracing.handler")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @task("trace.ok", registry=reg)
    async def ok(job: Job) -> None:
        with trace.get_tracer("test").start_as_current_span("inside the handler"):
            pass
        logging.getLogger("tracing.handler").info("handled", extra={"job": job.id})

    @task("trace.fail", registry=reg)
    async def fail(job: Job) -> None:
        raise ValueError(f"boom {job.attempt}")

    @task("trace.sync", registry=reg)
    def sync(job: Job) -> None:  # run in a thread: the span's context goes with it
        logging.getLogger("tracing.handler").info("handled in a thread", extra={"job": job.id})

    return reg


async def all_final(conn: asyncpg.Connection, ids: list[int]) -> bool:
    return await conn.fetchval(
        "SELECT count(*) FROM shoal.jobs WHERE id = ANY($1) AND state IN ('succeeded', 'failed')", ids) == len(ids)


def runs(spans: InMemorySpanExporter) -> dict[int, list[ReadableSpan]]:
    """The worker's job spans by job id, attempts in order."""
    out: dict[int, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        if span.name.startswith("shoal.run "):
            assert span.attributes is not None
            out.setdefault(int(span.attributes["shoal.job_id"]), []).append(span)  # type: ignore[arg-type]
    for attempts in out.values():
        attempts.sort(key=lambda s: s.attributes["shoal.attempt"])  # type: ignore[index]
    return out


async def test_a_job_runs_in_a_span_that_continues_the_producers_trace(
        db_url: str, conn: asyncpg.Connection, exporter: InMemorySpanExporter, json_lines: io.StringIO,
        caplog: pytest.LogCaptureFixture) -> None:
    await queues.declare_queue(conn, "tr", max_attempts=2, keep_succeeded_seconds=3600)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as parent:
        ok = await client.enqueue(conn, "tr", "trace.ok")
        failing = await client.enqueue(conn, "tr", "trace.fail")
        in_thread = await client.enqueue(conn, "tr", "trace.sync")
    untraced = await client.enqueue(conn, "tr", "trace.ok")
    # Plain SQL: a producer's own traceparent; and a malformed one, which must not fail the job.
    foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    from_sql = await conn.fetchval("SELECT shoal.enqueue('tr', 'trace.ok', trace_context => $1)", foreign)
    malformed = await conn.fetchval("SELECT shoal.enqueue('tr', 'trace.ok', trace_context => 'not-a-trace')")
    ids = [ok, failing, in_thread, untraced, from_sql, malformed]
    stored = dict(await conn.fetch("SELECT id, trace_context FROM shoal.jobs WHERE id = ANY($1)", ids))
    assert stored[untraced] is None and stored[from_sql] == foreign

    with caplog.at_level(logging.WARNING, "shoal.tracing"):
        async with running_worker(db_url, "tr", registry(), backoff_base=0.01, backoff_cap=0.05):
            await eventually(lambda: all_final(conn, ids), timeout=30)
    states = dict(await conn.fetch("SELECT id, state::text FROM shoal.jobs WHERE id = ANY($1)", ids))
    assert states == {**dict.fromkeys(ids, "succeeded"), failing: "failed"}

    by_job = runs(exporter)
    assert set(by_job) == {ok, failing, in_thread, from_sql}, "untraced and malformed jobs run without a span"
    producer = parent.get_span_context()
    for job_id in (ok, failing, in_thread):
        for span in by_job[job_id]:
            assert span.kind is SpanKind.CONSUMER
            assert span.context.trace_id == producer.trace_id
            assert span.parent is not None and span.parent.span_id == producer.span_id
            assert span.parent.is_remote
    [run] = by_job[ok]
    assert run.name == "shoal.run trace.ok"
    assert dict(run.attributes or {}) == {
        "messaging.system": "shoal", "messaging.operation": "process", "messaging.destination.name": "tr",
        "shoal.queue": "tr", "shoal.task": "trace.ok", "shoal.job_id": ok, "shoal.attempt": 1,
        "shoal.outcome": "succeeded"}
    assert run.status.status_code is StatusCode.UNSET and not run.events
    # The handler's own span is a child of the job's.
    inner = [s for s in exporter.get_finished_spans() if s.name == "inside the handler"
             and s.context.trace_id == producer.trace_id]
    assert [s.parent.span_id for s in inner if s.parent] == [run.context.span_id]

    first, second = by_job[failing]
    assert [s.attributes["shoal.outcome"] for s in (first, second)] == ["retry", "failed"]  # type: ignore[index]
    for span, attempt in ((first, 1), (second, 2)):
        assert span.status.status_code is StatusCode.ERROR
        [event] = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "ValueError"  # type: ignore[index]
        assert event.attributes["exception.message"] == f"boom {attempt}"  # type: ignore[index]

    [sql_run] = by_job[from_sql]
    assert f"{sql_run.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert sql_run.parent is not None and f"{sql_run.parent.span_id:016x}" == "b7ad6b7169203331"

    # JSON log lines written inside a handler carry its span's ids (async and in a thread).
    lines = {json.loads(line)["job"]: json.loads(line) for line in json_lines.getvalue().splitlines()}
    for job_id in (ok, in_thread):
        [span] = by_job[job_id]
        assert lines[job_id]["trace_id"] == f"{span.context.trace_id:032x}"
        assert lines[job_id]["span_id"] == f"{span.context.span_id:016x}"
    assert "trace_id" not in lines[untraced] and "span_id" not in lines[untraced]

    warnings = [r for r in caplog.records if r.name == "shoal.tracing"]
    assert [getattr(r, "job_id", None) for r in warnings] == [malformed]


async def test_a_timeout_and_a_cancellation_are_outcomes_of_the_span(
        db_url: str, conn: asyncpg.Connection, exporter: InMemorySpanExporter) -> None:
    await queues.declare_queue(conn, "tt", max_attempts=1, keep_succeeded_seconds=3600, keep_failed_seconds=3600)
    reg = TaskRegistry()
    started = asyncio.Event()

    @task("trace.slow", timeout=0.2, registry=reg)
    async def slow(job: Job) -> None:
        await asyncio.sleep(5)

    @task("trace.wait", registry=reg)
    async def wait(job: Job) -> None:
        started.set()
        await asyncio.sleep(30)

    with trace.get_tracer("test").start_as_current_span("request"):
        slow_id = await client.enqueue(conn, "tt", "trace.slow")
        wait_id = await client.enqueue(conn, "tt", "trace.wait")
    async with running_worker(db_url, "tt", reg):
        await asyncio.wait_for(started.wait(), 10)
        await client.cancel(conn, [wait_id])

        async def done() -> bool:
            return await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'tt' AND state IN "
                                       "('failed', 'cancelled')") == 2
        await eventually(done, timeout=20)
    by_job = runs(exporter)
    assert by_job[slow_id][0].attributes["shoal.outcome"] == "timeout"  # type: ignore[index]
    assert by_job[slow_id][0].status.status_code is StatusCode.ERROR
    assert by_job[wait_id][0].attributes["shoal.outcome"] == "cancelled"  # type: ignore[index]


async def test_held_claims_carry_the_trace_context(db_url: str, conn: asyncpg.Connection,
                                                   exporter: InMemorySpanExporter) -> None:
    """Short jobs are claimed held (sql/004_held_claims.sql), the fast path: traced the same."""
    from shoal.worker import metrics

    await queues.declare_queue(conn, "th")
    reg = TaskRegistry()

    @task("trace.noop", registry=reg)
    async def noop(job: Job) -> None:
        pass

    warm_up = 1500  # no-op jobs after which a worker knows its jobs are short and claims held
    await client.enqueue_many(conn, [client.NewJob("th", "trace.noop", priority=1) for _ in range(warm_up)])
    with trace.get_tracer("test").start_as_current_span("request") as parent:
        traced = await client.enqueue_many(conn, [client.NewJob("th", "trace.noop") for _ in range(200)])

    def held() -> float:
        return metrics.REGISTRY.get_sample_value("shoal_claims_total", {"queue": "th", "mode": "held"}) or 0.0

    async def drained() -> bool:
        return await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE queue = 'th'") == 0

    async with running_worker(db_url, "th", reg, concurrency=20):
        await eventually(drained, timeout=60)
    assert held() > 0
    by_job = runs(exporter)
    assert set(by_job) == set(traced)
    assert {s.parent.span_id for spans in by_job.values() for s in spans  # type: ignore[union-attr]
            } == {parent.get_span_context().span_id}
