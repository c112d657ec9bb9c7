"""The worker's task label is bounded (shoal.worker.metrics): a real worker on a real PostgreSQL
labels jobs of a registered task by its name and every other task name with one fixed value, so
job rows naming unknown tasks cannot add series without end. And shoal_build_info is exported."""

from __future__ import annotations

import asyncpg
import pytest

from helpers import running_worker
from shoal import build_info, client, queues
from shoal.client import NewJob
from shoal.worker import metrics


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def task_labels() -> set[str]:
    return {s.labels["task"] for family in metrics.REGISTRY.collect() for s in family.samples
            if "task" in s.labels}


async def test_unknown_task_names_map_to_one_label(db_url: str, conn: asyncpg.Connection) -> None:
    queue = "labels"
    await queues.declare_queue(conn, queue)
    ghosts = [f"ghost.task-{i}" for i in range(5)]
    async with running_worker(db_url, queue, backoff_base=30):
        ids = await client.enqueue_many(conn, [NewJob(queue, name, max_attempts=1) for name in ghosts])
        ids += await client.enqueue_many(conn, [NewJob(queue, "shoal.noop") for _ in range(2)])
        results = await client.wait(conn, ids, timeout=20)
    # Drained on leaving the block: every outcome has been counted.
    assert [results[i].state for i in ids] == ["failed"] * len(ghosts) + ["succeeded"] * 2
    unregistered = {"queue": queue, "task": metrics.UNREGISTERED_TASK}
    assert sample("shoal_jobs_failed_total", unregistered) == len(ghosts)
    assert sample("shoal_jobs_claimed_total", unregistered) == len(ghosts)
    assert sample("shoal_job_queue_wait_seconds_count", unregistered) == len(ghosts)
    assert sample("shoal_jobs_succeeded_total", {"queue": queue, "task": "shoal.noop"}) == 2
    assert sample("shoal_job_duration_seconds_count", {"queue": queue, "task": "shoal.noop"}) == 2
    assert not set(ghosts) & task_labels(), "an unknown task's name became a label value"


def test_task_label() -> None:
    metrics.register_task("known.task")
    assert metrics.task_label("known.task") == "known.task"
    assert metrics.task_label("never.registered") == metrics.UNREGISTERED_TASK


def test_build_info_is_exported() -> None:
    version = build_info.shoal_version()
    assert version and version != "unknown"
    assert sample("shoal_build_info", {"version": version}) == 1.0


def test_folded_values_land_in_their_buckets() -> None:
    """The worker appends to `pending` and `fold` counts the values later: a scrape must show
    each value in the first bucket whose bound it does not exceed (Prometheus `le`, bounds
    included), a negative queue wait (clock skew) counted as 0, and `pending` emptied in place."""
    bounds = (0.001, 0.01, 0.1, 1.0)
    values = [0.0005, 0.001, 0.0010001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 300.0, 0.001, 0.7]
    folded = metrics.HistogramChild(bounds)
    append = folded.pending.append
    for v in values[:5]:
        append(v)
    folded.fold()
    for v in values[5:]:
        append(v)  # the same list, held across a fold, as the runners hold it
    append(-0.25)
    folded.fold()
    expected = [0] * (len(bounds) + 1)
    for v in [*values, 0.0]:
        expected[next((i for i, b in enumerate(bounds) if v <= b), len(bounds))] += 1
    assert folded.counts == expected == [4, 2, 2, 3, 2]
    assert folded.sum == pytest.approx(sum(values))
    assert folded.pending == [] and folded.pending.append == append
