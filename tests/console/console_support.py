"""Fixtures of the console tests: the real aiohttp app on a real server, and jobs that really failed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from helpers import running_worker
from shoal import client, queues
from shoal.console.app import make_app
from shoal.console.auth import Auth
from shoal.tasks import Job, TaskRegistry, task

TOKEN = "s3cret-admin-token"
SCRIPT = "<script>alert('payload')</script>"
IMG = '<img src=x onerror="alert(1)">'


@contextlib.asynccontextmanager
async def console(db_url: str, token: str | None = None) -> AsyncIterator[TestClient]:
    """The console app served on a free port, and a client with its own cookie jar."""
    async with TestClient(TestServer(make_app(db_url, Auth(token)))) as c:
        yield c


def failing_registry() -> TaskRegistry:
    reg = TaskRegistry()

    @task("boom", registry=reg)
    async def boom(job: Job) -> None:
        explode(job.payload.get("why", "boom"))

    return reg


def explode(why: str) -> None:
    raise ValueError(f"cannot handle {why} {IMG}")


async def failed_jobs(db_url: str, conn: asyncpg.Connection, queue: str, n: int) -> list[int]:
    """n jobs that a real worker ran and that failed (one attempt each), with their tracebacks."""
    await queues.declare_queue(conn, queue)
    ids = [await client.enqueue(conn, queue, "boom", {"why": SCRIPT, "n": i}, max_attempts=1) for i in range(n)]
    async with running_worker(db_url, queue, failing_registry(), held_claims=False):
        res = await client.wait(conn, ids, timeout=30)
    assert {r.state for r in res.values()} == {"failed"}
    return ids
