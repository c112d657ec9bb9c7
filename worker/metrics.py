"""The worker's Prometheus metrics, in a registry of its own (no process collectors from
other libraries leak in, and tests can read exactly what a scrape would show).

The ``task`` label is bounded: a task is labelled by its name once a worker of this process has
found a handler for it (`register_task`, called by the executor's task table), and every other
name a job row carries is labelled `UNREGISTERED_TASK`, so jobs of unknown tasks cannot add
series without end.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any, TypeVar

from prometheus_client import PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from shoal.build_info import export_build_info

REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(PROCESS_COLLECTOR)
REGISTRY.register(PLATFORM_COLLECTOR)

_LABELS = ("queue", "task")
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# The task label of jobs whose task has no handler in this worker.
UNREGISTERED_TASK = "unregistered"
_registered: set[str] = set()


def register_task(name: str) -> None:
    """Label jobs of this task by its name (a handler for it is registered)."""
    _registered.add(name)


def task_label(task: str) -> str:
    return task if task in _registered else UNREGISTERED_TASK


_C = TypeVar("_C", bound="TaskCounter")


class TaskCounter(Counter):
    """A counter labelled (queue, task) whose task label is `task_label(task)`."""

    def labels(self: _C, *labelvalues: Any, **labelkwargs: Any) -> _C:
        if len(labelvalues) == 2:
            labelvalues = (labelvalues[0], task_label(str(labelvalues[1])))
        elif "task" in labelkwargs:
            labelkwargs["task"] = task_label(str(labelkwargs["task"]))
        return super().labels(*labelvalues, **labelkwargs)


JOBS_CLAIMED = TaskCounter("shoal_jobs_claimed", "Jobs claimed by this worker", _LABELS, registry=REGISTRY)
JOBS_SUCCEEDED = TaskCounter("shoal_jobs_succeeded", "Jobs that succeeded", _LABELS, registry=REGISTRY)
JOBS_FAILED = TaskCounter("shoal_jobs_failed", "Jobs that failed for good (no retry left)", _LABELS,
                          registry=REGISTRY)
JOBS_RETRIED = TaskCounter("shoal_jobs_retried", "Failed attempts scheduled for a retry", _LABELS,
                           registry=REGISTRY)
JOBS_CANCELLED = TaskCounter("shoal_jobs_cancelled", "Running jobs cancelled on request", _LABELS,
                             registry=REGISTRY)


class HistogramChild:
    """One labelled series of an EventLoopHistogram.

    The worker appends each value to `pending` (one C call per job) and `fold` counts what
    piled up, once per claim and at every scrape: sorted once, the values fall into the
    buckets by one bisect per bucket. Two calls per job that counted each value at once were 0.35 us of the 2.05 us
    of Python the worker runs per no-op job outside asyncpg and the event loop (claim to
    recorded outcome, measured without a database); appending and folding cost about 0.13.
    """

    __slots__ = ("bounds", "counts", "sum", "pending")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.pending: list[float] = []  # observed, not yet counted (cleared in place: callers hold its append)

    def fold(self) -> None:
        """Count the values in `pending` (a negative one, from clock skew, as 0)."""
        values = self.pending
        if not values:
            return
        values.sort()
        counts, start = self.counts, 0
        for i, bound in enumerate(self.bounds):  # bucket i: bounds[i-1] < value <= bounds[i]
            end = bisect_right(values, bound, start)
            counts[i] += end - start
            start = end
        counts[-1] += len(values) - start
        self.sum += sum(values[bisect_left(values, 0.0):])
        values.clear()


class EventLoopHistogram(Collector):
    """A labelled histogram for one event loop thread, exported like prometheus_client's.

    prometheus_client's Histogram takes a lock and walks every bucket on each observation;
    at tens of thousands of jobs a second that was a measurable share of the worker's CPU.
    Here the worker's hot paths append each value to a list and the counting happens in bulk
    (HistogramChild.fold), in the event loop's thread like every observation: scrapes are
    served there too (health.py).
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._labelnames = labelnames
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        if self._labelnames == _LABELS:
            values = (values[0], task_label(values[1]))
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = HistogramChild(self.bounds)
        return child

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self.documentation, labels=list(self._labelnames))]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self.documentation, labels=list(self._labelnames))
        for values, child in list(self.children.items()):
            child.fold()
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family


JOB_DURATION = EventLoopHistogram("shoal_job_duration_seconds", "Handler run time", _LABELS, _DURATION_BUCKETS,
                                  REGISTRY)
QUEUE_WAIT = EventLoopHistogram("shoal_job_queue_wait_seconds", "From scheduled run time to claim", _LABELS,
                                _DURATION_BUCKETS, REGISTRY)
IN_FLIGHT = Gauge("shoal_jobs_in_flight", "Jobs claimed and not yet finished by this worker", ("queue",),
                  registry=REGISTRY)
CLAIMS = Counter("shoal_claims", "Claims that returned jobs, by mode: held (one write per job) or leased",
                 ("queue", "mode"), registry=REGISTRY)
RATE_LIMITED = Counter("shoal_rate_limited_claims", "Claims that found the queue at its rate or concurrency limit",
                       ("queue", "reason"), registry=REGISTRY)
BUILD_INFO = export_build_info(REGISTRY)
