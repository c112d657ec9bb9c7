"""Task registration and the job object handlers receive.

A handler is `async def handler(job: Job) -> None` (or a plain function, run in a thread).
A batch handler (`@task(batch=True)`) receives `list[Job]` and may return a mapping of job
id to exception for the items that failed: only those are retried.

`@task(payload=Email)` (a dataclass or TypedDict) checks each payload before the handler runs
(shoal.payloads) and hands it over converted: `job.payload` is an `Email`, for the type checker
(`Job[Email]`) and at run time. The decorator returns the handler unchanged, signature included.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic

from shoal import names, payloads
from shoal.client import NewJob, encode_payload
from shoal.errors import ConfigError

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:  # a default for a TypeVar (PEP 696): a bare `Job` stays `Job[Any]`, even under mypy --strict
    from typing_extensions import TypeVar

Handler = Callable[..., Any]
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
P = TypeVar("P", default=Any)


@dataclass
class TaskSpec:
    """A registered task. `fn` is what the worker calls: the `handler` the user wrote, wrapped in a
    payload check when the task declares a `payload_type`."""

    name: str
    fn: Handler
    timeout: float | None = None
    batch: bool = False
    batch_size: int = 100
    is_async: bool = True
    handler: Handler | None = None
    payload_type: Any = None

    def __post_init__(self) -> None:
        if self.handler is None:
            self.handler = self.fn


class Job(Generic[P]):
    """What a handler sees of one job. Follow-up jobs added with `enqueue` are written in the
    same transaction that records this job's success, and discarded if it fails."""

    __slots__ = ("id", "queue", "task", "attempt", "max_attempts", "scheduled", "_raw", "_payload",
                 "followups")

    def __init__(self, id: int, queue: str, task: str, raw_payload: str, attempt: int, max_attempts: int,
                 scheduled: float | None) -> None:
        self.id = id
        self.queue = queue
        self.task = task
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.scheduled = scheduled  # run_at as epoch seconds: a float decodes far faster than a datetime
        self._raw = raw_payload
        self._payload: Any = _UNSET
        # A list only once `enqueue` adds one: a list per job was one more object for the cyclic
        # GC to track while thousands of claimed jobs wait in a fast worker.
        self.followups: Sequence[NewJob] = ()

    @property
    def scheduled_at(self) -> datetime | None:
        """When the job was due to run (its run_at)."""
        return None if self.scheduled is None else datetime.fromtimestamp(self.scheduled, UTC)

    @property
    def payload(self) -> P:
        if self._payload is _UNSET:
            self._payload = json.loads(self._raw) if self._raw else None
        return self._payload

    def enqueue(self, queue: str, task: str, payload: Any = None, *, priority: int = 0,
                run_at: datetime | None = None, delay: float | timedelta | None = None,
                max_attempts: int | None = None, unique_key: str | None = None) -> None:
        names.queue_name(queue)
        names.task_name(task)
        encode_payload(payload)
        new = NewJob(queue, task, payload, priority, run_at, delay, max_attempts, unique_key)
        if isinstance(self.followups, list):
            self.followups.append(new)
        else:
            self.followups = [new]

    def __repr__(self) -> str:
        return f"Job(id={self.id}, queue={self.queue!r}, task={self.task!r}, attempt={self.attempt})"


_UNSET: Any = object()


@dataclass
class TaskRegistry:
    tasks: dict[str, TaskSpec] = field(default_factory=dict)

    def register(self, spec: TaskSpec) -> TaskSpec:
        names.task_name(spec.name)
        existing = self.tasks.get(spec.name)
        if existing is not None and existing.handler is not spec.handler:
            raise ConfigError(f"task {spec.name!r} is registered twice ({existing.handler!r} and {spec.handler!r})")
        self.tasks[spec.name] = spec
        return spec

    def get(self, name: str) -> TaskSpec | None:
        return self.tasks.get(name)


registry = TaskRegistry()


def task(name: str | None = None, *, timeout: float | None = None, batch: bool = False, batch_size: int = 100,
         payload: Any = None, registry: TaskRegistry = registry) -> Callable[[HandlerT], HandlerT]:
    """Register a handler under `name` (default: module.function). `payload`: a dataclass or
    TypedDict every payload of this task must match (shoal.payloads); a mismatch fails the job
    at once, naming the field."""
    check = None if payload is None else payloads.decoder(payload)  # an unsupported type fails at import

    def decorate(fn: HandlerT) -> HandlerT:
        is_async = inspect.iscoroutinefunction(fn)
        runs = fn if check is None else _checked(fn, check, batch=batch, is_async=is_async)
        registry.register(TaskSpec(
            name=name or f"{fn.__module__}.{fn.__qualname__}", fn=runs, timeout=timeout, batch=batch,
            batch_size=batch_size, is_async=is_async, handler=fn, payload_type=payload,
        ))
        return fn

    return decorate


def _convert(job: Job[Any], check: Callable[[Any], Any]) -> None:
    job._payload = check(job.payload)


def _checked(fn: Handler, check: Callable[[Any], Any], *, batch: bool, is_async: bool) -> Handler:
    """`fn` behind the payload check. In a batch only the mismatching jobs fail; the rest run."""
    if not batch:
        if is_async:
            async def one_async(job: Job[Any]) -> Any:
                _convert(job, check)
                return await fn(job)
            return one_async

        def one(job: Job[Any]) -> Any:
            _convert(job, check)
            return fn(job)
        return one

    def split(jobs: list[Job[Any]]) -> tuple[list[Job[Any]], dict[int, BaseException]]:
        good: list[Job[Any]] = []
        bad: dict[int, BaseException] = {}
        for job in jobs:
            try:
                _convert(job, check)
                good.append(job)
            except payloads.PayloadError as exc:
                bad[job.id] = exc
        return good, bad

    def merged(bad: dict[int, BaseException], result: Mapping[int, Any] | None) -> dict[int, Any]:
        return {**bad, **dict(result or {})}

    if is_async:
        async def many_async(jobs: list[Job[Any]]) -> dict[int, Any]:
            good, bad = split(jobs)
            result: Awaitable[Any] | None = fn(good) if good else None
            return merged(bad, await result if result is not None else None)
        return many_async

    def many(jobs: list[Job[Any]]) -> dict[int, Any]:
        good, bad = split(jobs)
        return merged(bad, fn(good) if good else None)
    return many


def load_modules(modules: list[str]) -> None:
    """Import the modules named on the command line so their @task decorators run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--tasks: cannot import task module {module!r}: {exc}. "
                              "Is it installed in the image or on PYTHONPATH?") from exc


async def call(spec: TaskSpec, arg: Any) -> Any:
    if spec.is_async:
        return await spec.fn(arg)
    return await asyncio.to_thread(spec.fn, arg)
