"""Checking and encoding jobs before they reach the database; the database's refusals as typed errors.

The rules are those sql/005_validation.sql applies to jobs enqueued from SQL: same patterns,
ranges and messages (tests/core/test_validation.py feeds both the same inputs). The client checks
first so that an error names the job (`jobs[i].field`), costs no round trip and leaves the
caller's transaction usable; the database checks for every other producer.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NoReturn, TypeAlias

import asyncpg

from shoal import names
from shoal.errors import ShoalError, UnknownQueueError, ValidationError
from shoal.jobs import NewJob

# The column types: smallint priority, integer max_attempts. run_at strictly between Python's
# first and last datetime: asyncpg writes those two as -infinity and infinity, and cannot read
# back a time outside them.
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
MAX_ATTEMPTS_MAX = 2**31 - 1
RUN_AT_MIN, RUN_AT_MAX = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
PRIORITY_HINT = "use an integer from -32768 to 32767 (higher runs first; the default is 0)"
MAX_ATTEMPTS_HINT = "use an integer from 1 to 2147483647, or leave it unset for the queue's default"
UNIQUE_KEY_HINT = "use a non-empty string without NUL characters, or leave it unset for no key"
RUN_AT_HINT = "use a timezone-aware time within years 1-9999 UTC, or leave it unset for now"
DELAY_HINT = "use a number of seconds >= 0 or a timedelta, ending before year 10000"
PAYLOAD_HINT = "pass dicts, lists, strings, numbers, booleans, None or dataclass instances"
SQLSTATE_INVALID = "SHV01"  # raised by shoal.invalid (sql/005_validation.sql)
_SQLSTATE_UNKNOWN_QUEUE = "SHQ01"
_UNKNOWN_QUEUE = re.compile(r'unknown queue "([^"]*)"')
_SQL_ELEMENT = re.compile(r"(\w+)s\[(\d+)\]")  # an element of enqueue_many's arrays: 'tasks[2]'

# One job, validated and encoded: queue, task, payload (JSON text), priority, run_at, max_attempts,
# unique_key. None means "the default": now() for run_at, the queue's for max_attempts.
Row: TypeAlias = tuple[str, str, str, int, datetime | None, int | None, str | None]


@dataclass
class Batch:
    """Jobs checked and encoded by `validate`, ready for either enqueue path (shoal.producer)."""

    rows: list[Row]
    queues: set[str]  # the distinct queues


# One encoder for all payloads: json.dumps with options builds a new encoder on every call,
# which was a third of the client's time for a 50,000-job batch.
def _dataclass_as_dict(value: Any) -> Any:
    """The encoder's fallback: a dataclass instance (a typed payload, shoal.payloads) as its dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_dataclass_as_dict)
# What `_ENCODER.encode` calls, minus the per-call setup (see `_payload_encoder`).
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
# jsonb stores text, which holds neither NUL nor half of a surrogate pair. The encoder writes both
# as \u escapes (ensure_ascii), so a payload holds one if its JSON does; escapes are read left to
# right so that an escaped backslash followed by "u0000" is not taken for one.
_ESCAPE = re.compile(r"\\(?:u(0000|d[89ab][0-9a-f]{2}(?:\\ud[c-f][0-9a-f]{2})?|d[c-f][0-9a-f]{2})|.)")


def _invalid(field: str, problem: str, hint: str) -> NoReturn:
    raise ValidationError(field, f"{problem}: {hint}")


def _payload_error(field: str, exc: Exception) -> ValidationError:
    return ValidationError(field, f"payload is not JSON-serialisable ({exc}); {PAYLOAD_HINT}")


def _check_escapes(text: str, field: str) -> None:
    """Refuse JSON text that jsonb cannot store (a NUL character or a lone surrogate)."""
    for m in _ESCAPE.finditer(text):
        code = m.group(1)
        if code is not None and len(code) == 4:
            what = "a NUL character" if code == "0000" else "a lone surrogate, which is not valid Unicode,"
            _invalid(field, f"payload contains {what} (\\u{code}) that PostgreSQL cannot store in jsonb",
                     "remove it, or encode binary data as text (e.g. base64)")


def encode_payload(payload: Any, field_name: str = "payload") -> str:
    """One payload as the JSON text jsonb stores (None as {}); a ValidationError naming `field_name`
    if it cannot be stored. `validate` does the same per job, faster, for a whole batch."""
    if payload is None:
        return "{}"
    try:
        text = _ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        raise _payload_error(field_name, exc) from exc
    if "\\u" in text:
        _check_escapes(text, field_name)
    return text


def _payload_encoder() -> Callable[[Any, int], list[str]]:
    """`_ENCODER.encode` for one batch, minus building a C encoder for every payload: returns
    the text in pieces, to be joined.

    `JSONEncoder.encode` makes a new C encoder (from the same settings) per call, two thirds of
    the cost of encoding a small payload. One per batch and never shared: the C encoder's
    circular-reference markers are not cleared when it raises, and are not thread-safe.
    """
    if _C_MAKE_ENCODER is None:  # no C accelerator (e.g. PyPy)
        return lambda payload, _level: [_ENCODER.encode(payload)]
    enc = _ENCODER
    return _C_MAKE_ENCODER({}, enc.default, json.encoder.encode_basestring_ascii,  # type: ignore[no-any-return]
                           enc.indent, enc.key_separator, enc.item_separator, enc.sort_keys,
                           enc.skipkeys, enc.allow_nan)


def _check_int(value: object, field: str, name: str, low: int, high: int, hint: str) -> None:
    """An int (not a bool, which is one to Python but a mistake here) in low..high."""
    if value is None:
        _invalid(field, f"no {name} given", hint)
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid(field, f"{name} {names.quote(value)} is not an integer", hint)
    if not low <= value <= high:
        _invalid(field, f"{name} {value} is out of range", hint)


def _delay_run_at(delay: object, field: str) -> datetime | None:
    """now + delay; an error rather than OverflowError for a delay past year 9999 or infinite."""
    if isinstance(delay, timedelta):
        step: timedelta | None = delay
    elif isinstance(delay, numbers.Real) and not isinstance(delay, bool):
        try:
            step = timedelta(seconds=float(delay))
        except (OverflowError, ValueError):  # inf, nan, beyond timedelta
            step = None
    else:
        _invalid(field, f"delay {names.quote(delay)} is not a number of seconds or a timedelta", DELAY_HINT)
    if step is None or step < timedelta(0):
        _invalid(field, f"delay {names.quote(delay)} is out of range", DELAY_HINT)
    if not step:
        return None
    try:
        at = datetime.now(UTC) + step
    except OverflowError:
        at = RUN_AT_MAX
    if at >= RUN_AT_MAX:
        _invalid(field, f"delay {names.quote(delay)} is out of range", DELAY_HINT)
    return at


def _run_at(job: NewJob, where: str) -> datetime | None:
    run_at, field = job.run_at, f"{where}run_at"
    if run_at is not None and job.delay is not None:
        raise ValidationError(field, "give either run_at or delay, not both")
    if job.delay is not None:
        return _delay_run_at(job.delay, f"{where}delay")
    if run_at is None:
        return None
    if not isinstance(run_at, datetime):
        _invalid(field, f"run_at {names.quote(run_at)} is not a datetime", RUN_AT_HINT)
    if run_at.utcoffset() is None:
        _invalid(field, f"run_at {run_at!r} has no timezone", "make it timezone-aware, e.g. datetime.now(timezone.utc)")
    if not RUN_AT_MIN < run_at < RUN_AT_MAX:
        _invalid(field, f"run_at {run_at} is out of range", RUN_AT_HINT)
    return run_at


# Queue and task names found valid in this process: a single job (a batch of its own, each time)
# skips checking them again. Bounded, since names can be made at run time.
_SEEN_MAX = 4096
_queues_seen: set[str] = set()
_tasks_seen: set[str] = set()


def _seen(seen: set[str], name: str) -> str:
    if len(seen) >= _SEEN_MAX:
        seen.clear()
    seen.add(name)
    return name


def _check_job(job: NewJob, where: str, valid_queues: set[str], valid_tasks: set[str]) -> None:
    """Every check of one job but the payload and run_at/delay ones, in the order errors are
    reported (shoal.check_job's)."""
    if not isinstance(job.queue, str) or job.queue not in valid_queues:  # check each name once
        valid_queues.add(_seen(_queues_seen, names.queue_name(job.queue, f"{where}queue")))
    if not isinstance(job.task, str) or job.task not in valid_tasks:
        valid_tasks.add(_seen(_tasks_seen, names.task_name(job.task, f"{where}task")))
    _check_int(job.priority, f"{where}priority", "priority", PRIORITY_MIN, PRIORITY_MAX, PRIORITY_HINT)
    if job.max_attempts is not None:
        _check_int(job.max_attempts, f"{where}max_attempts", "max_attempts", 1, MAX_ATTEMPTS_MAX, MAX_ATTEMPTS_HINT)
    key = job.unique_key
    if key is not None:
        if not isinstance(key, str):
            _invalid(f"{where}unique_key", f"unique_key {names.quote(key)} is not a string", UNIQUE_KEY_HINT)
        if not key:
            _invalid(f"{where}unique_key", "unique_key is empty", UNIQUE_KEY_HINT)
        if "\x00" in key:
            _invalid(f"{where}unique_key", "unique_key contains a NUL character", UNIQUE_KEY_HINT)


def validate(jobs: Sequence[NewJob], start: int = 0, stop: int | None = None) -> Batch:
    """Check and encode jobs[start:stop]; an error names the field (`jobs[i].field` in a batch of several).

    A job whose queue and task were already checked and whose values are of the plain types
    costs a few comparisons; anything else (a first queue or task, a bool priority, a bad value)
    goes through `_check_job`, so every job passes the same checks.
    """
    rows: list[Row] = []
    append = rows.append
    encode, join = _payload_encoder(), "".join
    many = len(jobs) > 1
    valid_queues: set[str] = set()
    valid_tasks: set[str] = set()
    for i, job in enumerate(jobs[start:stop], start):
        queue, task, payload, priority = job.queue, job.task, job.payload, job.priority
        run_at, max_attempts, unique_key = job.run_at, job.max_attempts, job.unique_key
        if not many and type(queue) is str and queue in _queues_seen and type(task) is str and task in _tasks_seen:
            valid_queues.add(queue)
            valid_tasks.add(task)
        if not (type(queue) is str and queue in valid_queues and type(task) is str and task in valid_tasks
                and type(priority) is int and -32768 <= priority <= 32767  # literals: no global lookups
                and (max_attempts is None or (type(max_attempts) is int and 1 <= max_attempts <= 2147483647))
                and (unique_key is None or (type(unique_key) is str and unique_key and "\x00" not in unique_key))):
            _check_job(job, f"jobs[{i}]." if many else "", valid_queues, valid_tasks)
        if payload is None:
            text = "{}"
        else:
            try:
                text = join(encode(payload, 0))
            except (TypeError, ValueError) as exc:
                raise _payload_error(f"jobs[{i}].payload" if many else "payload", exc) from exc
            if "\\u" in text:  # non-ASCII or control characters: rare, and most are storable
                _check_escapes(text, f"jobs[{i}].payload" if many else "payload")
        if job.delay is not None or (run_at is not None and not (
                type(run_at) is datetime and run_at.tzinfo is not None and 1 < run_at.year < 9999)):
            run_at = _run_at(job, f"jobs[{i}]." if many else "")
        append((queue, task, text, priority, run_at, max_attempts, unique_key))
    return Batch(rows, valid_queues)


def database_refusal(sqlstate: str | None, message: str, column: str | None, hint: str | None,
                     jobs: int | None = None) -> ShoalError | None:
    """The typed error for a refusal of the enqueue functions, whichever driver reported it
    (asyncpg here, psycopg in shoal.sync): the same refusal gives the same error on both paths.
    None when the error is not one of ours.

    `message`: the primary message; `column`, `hint`: the error's COLUMN and HINT fields. SHV01 is
    turned into the ValidationError the client would have raised ('task: <problem>' plus the HINT).
    """
    if sqlstate == _SQLSTATE_UNKNOWN_QUEUE:
        m = _UNKNOWN_QUEUE.search(message)
        return UnknownQueueError(m.group(1) if m else "?")
    if sqlstate != SQLSTATE_INVALID:
        return None
    field, _, problem = message.partition(": ")
    field = column or field
    element = _SQL_ELEMENT.fullmatch(field) if jobs else None
    if element and jobs:
        field = f"jobs[{int(element[2]) - 1}].{element[1]}" if jobs > 1 else element[1]
    return ValidationError(field, f"{problem}: {hint}" if hint else problem)


class _Translating:
    """`translate_errors`'s context manager: a class, not a generator, because the single-job
    enqueue (the web request's path) enters one per call and a generator-based one costs it ~0.7 us."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: int | None) -> None:
        self.jobs = jobs

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, asyncpg.PostgresError):
            error = database_refusal(getattr(exc, "sqlstate", None), str(getattr(exc, "message", None) or exc),
                                     getattr(exc, "column_name", None), getattr(exc, "hint", None), self.jobs)
            if error is not None:
                raise error from None


def translate_errors(jobs: int | None = None) -> _Translating:
    """Turn the database's refusals (through asyncpg) into the typed errors the API documents.

    `jobs`: the number of jobs of the shoal.enqueue_many call inside; its array elements
    ('tasks[2]') are then named as the client names them ('jobs[1].task', or 'task' alone).
    """
    return _Translating(jobs)


# The names `Row`, `Batch` and `validate` had while private. bench/enqueue_paths.py --baseline REF
# runs core/client.py of an older REF against this module, and that file imports these.
_Row = Row
_Batch = Batch
_validate = validate
