"""The examples run: each app enqueues through its real routes, a real worker runs the jobs, and the
app's waiting route reports their outcome (examples/README.md)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import asyncpg
import httpx
import pytest
from producing import ROOT, run_django_suite

from helpers import running_worker
from shoal import queues

FASTAPI_EXAMPLE = ROOT / "examples" / "fastapi_app"


def test_the_django_example(qdb: str, server_url: str) -> None:
    """A real `shoal worker` process runs the job the signup view enqueued (django_suite/check_example.py)."""
    run_django_suite(qdb, server_url, "check_example.py")


@pytest.fixture
def fastapi_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, ModuleType]]:
    monkeypatch.syspath_prepend(str(FASTAPI_EXAMPLE))
    api, tasks = importlib.import_module("reports_api"), importlib.import_module("reports_tasks")
    yield api, tasks
    for name in ("reports_api", "reports_tasks"):
        sys.modules.pop(name, None)


async def test_the_fastapi_example(db_url: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
                                   fastapi_example: tuple[ModuleType, ModuleType]) -> None:
    api, _tasks = fastapi_example  # importing the tasks registers reports.build for the worker below
    await queues.declare_queue(conn, "reports", max_attempts=1, keep_succeeded_seconds=3600)
    await conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
    monkeypatch.setenv("DATABASE_URL", db_url)
    app = api.app
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://example") as http:
        report = (await http.post("/reports", json={"name": "daily", "rows": 50})).json()["job"]
        bad = (await http.post("/reports", json={"name": "broken", "rows": -1})).json()["job"]
        order = (await http.post("/orders", json={"item": "book"})).json()
        pending = await http.get(f"/jobs/{report}", params={"timeout": 0.1})
        assert pending.status_code == 202 and pending.json()["state"] == "pending"
        async with running_worker(db_url, "reports"):
            done = await http.get(f"/jobs/{report}", params={"timeout": 20})
            failed = await http.get(f"/jobs/{bad}", params={"timeout": 20})
            ordered = await http.get(f"/jobs/{order['job']}", params={"timeout": 20})
    assert done.json() == {"job": report, "state": "succeeded", "attempts": 1, "error": None, "pruned": False}
    assert failed.json()["state"] == "failed" and "rows must be >= 0" in failed.json()["error"]
    assert ordered.json()["state"] == "succeeded"
    assert await conn.fetchval("SELECT payload->>'name' FROM shoal.jobs WHERE id = $1", order["job"]) == "order-1"


def test_examples_readme_names_both_examples() -> None:
    text = (ROOT / "examples" / "README.md").read_text()
    assert "django_app" in text and "fastapi_app" in text
    assert Path(FASTAPI_EXAMPLE / "reports_api.py").exists()
