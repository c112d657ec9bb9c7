"""Traces from the producer to the handler: the optional `shoal[otel]` extra (docs/tracing.md).

The only module of Shoal that imports OpenTelemetry (an import contract checks it), and only
once the application has: until something has imported `opentelemetry.trace`, nobody can have
opened a span or set a tracer provider, so every function here returns at once and Shoal does
not pay for the import. Without the extra tracing is off and costs nothing.

- Producers: `current_context()` is the W3C trace context of the span active at enqueue
  (`traceparent`, then a space and `tracestate` if any), stored with the job in
  shoal.jobs.trace_context (sql/009_trace_context.sql); None without an active span.
- Workers: `start_job` opens a CONSUMER span `shoal.run <task>` whose parent is the stored
  context and makes it current while the handler runs; `end_job` records the outcome (and the
  error) and ends it. Jobs without a stored context, or workers without a configured
  TracerProvider, get no span.
- Logs: `log_ids()` gives the current span's trace_id and span_id for shoal.logs' JSON lines.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

log = logging.getLogger("shoal.tracing")

# Version 00 of W3C Trace Context: version-traceid-parentid-flags, lowercase hex. Later versions
# may append fields after the flags ("-..."), which a version 00 parser ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_INSTRUMENTATION = "shoal"
# The values of a job span's `shoal.outcome` (see `outcome_name`).
OUTCOMES = ("succeeded", "retry", "failed", "cancelled", "timeout", "released")


# opentelemetry.trace and opentelemetry.context once loaded; False: they cannot be imported.
_trace: Any = None
_context: Any = None


def _api() -> Any:
    """opentelemetry.trace if the application has imported it (else None: no span can exist)."""
    if _trace is None:
        return _load() if "opentelemetry.trace" in sys.modules else None
    return _trace or None


def _load() -> Any:
    global _trace, _context
    try:
        from opentelemetry import context, trace
    except ImportError:  # the extra is not installed (or is hidden)
        _trace = False
        return None
    _trace, _context = trace, context
    return trace


def available() -> bool:
    """Whether OpenTelemetry's API can be imported (the `otel` extra is installed)."""
    return bool(_trace or _load())


def enabled() -> bool:
    """Whether spans would be recorded: the API is there and a real TracerProvider is set (not
    the API's proxy or no-op one). Read per job, so a provider set after start is honoured."""
    return _tracer() is not None


_cached: tuple[Any, Any] = (None, None)  # (the provider, Shoal's tracer from it)


def _tracer() -> Any:
    """Shoal's tracer, or None when spans would go nowhere."""
    global _cached
    trace = _api()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    if _cached[0] is not provider:
        _cached = (provider, provider.get_tracer(_INSTRUMENTATION))
    return _cached[1]


def _current_span_context() -> Any:
    """The current span's SpanContext if there is a valid one (None without OpenTelemetry)."""
    trace = _api()
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def current_context() -> str | None:
    """The W3C trace context of the current span, as stored with a job; None without one."""
    ctx = _current_span_context()
    if ctx is None:
        return None
    parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return f"{parent} {state}" if state else parent


def parse(stored: str) -> Any:
    """The SpanContext (remote) of a stored trace context, or None if it is malformed (or
    OpenTelemetry is not loaded)."""
    trace = _api()
    if trace is None:
        return None
    traceparent, _, tracestate = stored.strip().partition(" ")
    m = _TRACEPARENT.fullmatch(traceparent)
    if m is None or m[1] == "ff" or (m[1] == "00" and m[5]):
        return None
    trace_id, span_id = int(m[2], 16), int(m[3], 16)
    if not trace_id or not span_id:
        return None
    state = trace.TraceState.from_header([tracestate]) if tracestate.strip() else None
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(int(m[4], 16)),
                             trace_state=state)


class JobSpan:
    """A running job's span and the context token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token


def start_job(stored: str, queue: str, task: str, job_id: int, attempt: int) -> JobSpan | None:
    """Open the span of one attempt of a job enqueued with trace context `stored`, and make it
    current (the handler's own spans and log lines become its children). None when tracing is off
    or `stored` is malformed (a warning: the job runs all the same). Never raises."""
    try:
        tracer = _tracer()
        if tracer is None:
            return None
        parent = parse(stored)
        if parent is None:
            log.warning("ignoring a malformed trace context stored with a job",
                        extra={"job_id": job_id, "task": task, "trace_context": stored[:200]})
            return None
        trace = _trace
        span = tracer.start_span(
            f"shoal.run {task}", context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=trace.SpanKind.CONSUMER, attributes={
                "messaging.system": "shoal", "messaging.operation": "process", "messaging.destination.name": queue,
                "shoal.queue": queue, "shoal.task": task, "shoal.job_id": job_id, "shoal.attempt": attempt})
        return JobSpan(span, _context.attach(trace.set_span_in_context(span)))
    except Exception as exc:  # a tracing bug or a broken exporter must not stop the job
        log.warning("could not start a job's span", extra={"job_id": job_id, "error": repr(exc)})
        return None


def outcome_name(outcome: Any, error: BaseException | None) -> str:
    """`shoal.outcome` of an attempt, from how the worker says it finished (None: released at
    shutdown; the job itself: it succeeded; else an Outcome of kind "fail" or "cancel") and the
    handler's error."""
    if outcome is None:
        return "released"
    kind = getattr(outcome, "kind", None)  # a Job has no kind
    if kind is None:
        return "succeeded"
    if kind == "cancel":
        return "cancelled"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "failed" if outcome.final_failure else "retry"


def end_job(job_span: JobSpan, outcome: Any, error: BaseException | None = None) -> None:
    """Record how an attempt finished (as `outcome_name` reads it) and the handler's error on its
    span, end it, and make the runner's own context current again. Never raises."""
    span = job_span.span
    try:
        name = outcome_name(outcome, error)
        span.set_attribute("shoal.outcome", name)
        if error is not None:
            span.record_exception(error)
        if name in ("failed", "retry", "timeout"):
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, outcome.error))
        span.end()
    except Exception as exc:
        log.warning("could not end a job's span", extra={"error": repr(exc)})
    finally:
        _context.detach(job_span.token)


def log_ids() -> tuple[str, str] | None:
    """The current span's trace_id and span_id (hex), for log lines; None without one."""
    ctx = _current_span_context()
    if ctx is None:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
