"""Task registration and the job object handlers receive.

A handler is `async def handler(job: Job) -> None` (or a plain function, run in a thread).
A batch handler (`@task(batch=True)`) receives `list[Job]` and may return a mapping of job
id to exception for the items that failed: only those are retried.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shoal import names
from shoal.client import NewJob, encode_payload
from shoal.errors import ConfigError

Handler = Callable[..., Any]


@dataclass
class TaskSpec:
    name: str
    fn: Handler
    timeout: float | None = None
    batch: bool = False
    batch_size: int = 100
    is_async: bool = True


class Job:
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
        self.followups: list[NewJob] = []

    @property
    def scheduled_at(self) -> datetime | None:
        """When the job was due to run (its run_at)."""
        return None if self.scheduled is None else datetime.fromtimestamp(self.scheduled, UTC)

    @property
    def payload(self) -> Any:
        if self._payload is _UNSET:
            self._payload = json.loads(self._raw) if self._raw else None
        return self._payload

    def enqueue(self, queue: str, task: str, payload: Any = None, *, priority: int = 0,
                run_at: datetime | None = None, delay: float | timedelta | None = None,
                max_attempts: int | None = None, unique_key: str | None = None) -> None:
        names.queue_name(queue)
        names.task_name(task)
        encode_payload(payload)
        self.followups.append(NewJob(queue, task, payload, priority, run_at, delay, max_attempts, unique_key))

    def __repr__(self) -> str:
        return f"Job(id={self.id}, queue={self.queue!r}, task={self.task!r}, attempt={self.attempt})"


_UNSET: Any = object()


@dataclass
class TaskRegistry:
    tasks: dict[str, TaskSpec] = field(default_factory=dict)

    def register(self, spec: TaskSpec) -> TaskSpec:
        names.task_name(spec.name)
        existing = self.tasks.get(spec.name)
        if existing is not None and existing.fn is not spec.fn:
            raise ConfigError(f"task {spec.name!r} is registered twice ({existing.fn!r} and {spec.fn!r})")
        self.tasks[spec.name] = spec
        return spec

    def get(self, name: str) -> TaskSpec | None:
        return self.tasks.get(name)


registry = TaskRegistry()


def task(name: str | None = None, *, timeout: float | None = None, batch: bool = False, batch_size: int = 100,
         registry: TaskRegistry = registry) -> Callable[[Handler], Handler]:
    """Register a handler under `name` (default: module.function)."""

    def decorate(fn: Handler) -> Handler:
        registry.register(TaskSpec(
            name=name or f"{fn.__module__}.{fn.__qualname__}", fn=fn, timeout=timeout, batch=batch,
            batch_size=batch_size, is_async=inspect.iscoroutinefunction(fn),
        ))
        return fn

    return decorate


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
