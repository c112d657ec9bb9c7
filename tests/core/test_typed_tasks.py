"""Typed tasks (issue 16, item 5): `@shoal.task(payload=T)` keeps the handler's signature for type
checkers, a payload is checked and converted at the worker's boundary (a mismatch fails that job
alone, at once, naming the field), producers hand in dataclass instances, and `mypy --strict`
passes on the example module while catching a wrong use of a typed payload."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import asyncpg
import pytest

from helpers import running_worker
from shoal import client, queues
from shoal.payloads import PayloadError, decoder
from shoal.tasks import Job, TaskRegistry, task

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Line:
    sku: str
    qty: int


@dataclass
class Order:
    customer: str
    lines: list[Line]
    note: str | None = None
    rush: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    channel: Literal["web", "shop"] = "web"


class Resize(TypedDict):
    url: str
    width: int
    scale: NotRequired[float]


def test_a_matching_payload_becomes_the_declared_type() -> None:
    order = decoder(Order)({"customer": "ada", "lines": [{"sku": "a-1", "qty": 2}], "tags": {"k": "v"},
                            "channel": "shop"})
    assert order == Order("ada", [Line("a-1", 2)], tags={"k": "v"}, channel="shop")
    assert decoder(Resize)({"url": "u", "width": 3, "scale": 2}) == {"url": "u", "width": 3, "scale": 2.0}


@pytest.mark.parametrize(("payload", "message"), [
    ({"lines": []}, "payload.customer: required field missing"),
    ({"customer": 7, "lines": []}, "payload.customer: expected str, got int"),
    ({"customer": "a", "lines": [{"sku": "x", "qty": 1}, {"sku": 5, "qty": 1}]},
     "payload.lines[1].sku: expected str, got int"),
    ({"customer": "a", "lines": [], "rush": 1}, "payload.rush: expected bool, got int"),
    ({"customer": "a", "lines": [], "channel": "fax"}, "payload.channel: expected one of 'web', 'shop', got 'fax'"),
    ({"customer": "a", "lines": [], "colour": "red"}, "payload.colour: unknown field"),
    ([1, 2], "payload: expected object, got array"),
    (None, "payload: expected object, got null"),
])
def test_a_mismatch_names_the_field_and_the_fix(payload: Any, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decoder(Order)(payload)
    assert message in str(caught.value)
    assert "the task expects a Order payload: enqueue one that matches it" in str(caught.value)


def test_an_unsupported_payload_type_fails_at_import_not_at_run_time() -> None:
    with pytest.raises(TypeError, match="payload type .* is not supported"):
        task("bad.type", payload=set[int], registry=TaskRegistry())


async def test_a_worker_converts_typed_payloads_and_fails_a_mismatch_alone(db_url: str,
                                                                         conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "typed", max_attempts=5)
    seen: list[Order] = []
    batches: list[list[str]] = []
    registry = TaskRegistry()

    @task("orders.place", payload=Order, registry=registry)
    async def place(job: Job[Order]) -> None:
        assert isinstance(job.payload, Order)
        seen.append(job.payload)

    @task("orders.audit", payload=Resize, batch=True, registry=registry)
    def audit(jobs: list[Job[Resize]]) -> None:
        batches.append([j.payload["url"] for j in jobs])

    ok = await client.enqueue(conn, "typed", "orders.place", Order("ada", [Line("a-1", 2)], note="hi"))
    bad = await client.enqueue(conn, "typed", "orders.place", {"customer": "bob", "lines": [{"sku": 1, "qty": 1}]})
    good_items = [await client.enqueue(conn, "typed", "orders.audit", {"url": f"u{i}", "width": i}) for i in range(3)]
    bad_item = await client.enqueue(conn, "typed", "orders.audit", {"url": "u9"})
    stored = await conn.fetchval("SELECT payload FROM shoal.jobs WHERE id = $1", ok)
    assert '"note": "hi"' in stored and '"sku": "a-1"' in stored  # a dataclass goes in as its JSON object
    async with running_worker(db_url, "typed", registry, held_claims=False):
        results = await client.wait(conn, [ok, bad, *good_items, bad_item], mode="all", timeout=30)
    assert seen == [Order("ada", [Line("a-1", 2)], note="hi")]
    assert results[ok].state == "succeeded", results[ok]
    assert all(results[i].state == "succeeded" for i in good_items), [results[i] for i in good_items]
    assert sorted(u for batch in batches for u in batch) == ["u0", "u1", "u2"]
    for job_id, message in ((bad, "payload.lines[0].sku: expected str, got int"),
                            (bad_item, "payload.width: required field missing")):
        assert results[job_id].state == "failed" and results[job_id].attempts == 1  # no retries: it can't pass
        assert message in (results[job_id].error or "")


def test_the_decorator_keeps_the_handler_itself() -> None:
    registry = TaskRegistry()

    async def handler(job: Job[Order]) -> None:
        return None

    assert task("keep.me", payload=Order, registry=registry)(handler) is handler
    assert registry.tasks["keep.me"].handler is handler and registry.tasks["keep.me"].payload_type is Order
    task("keep.me", payload=Order, registry=registry)(handler)  # importing a module twice is no conflict


BAD_USE = '''
import shoal
from examples.typed.tasks import Email


@shoal.task("mail.bad", payload=Email)
async def bad(job: shoal.Job[Email]) -> None:
    job.payload.subjct  # a typo mypy must catch
    count: int = job.payload.to  # a str is no int


value: int = bad  # the decorator kept the signature: a coroutine function is no int
'''


def strict_mypy(tmp_path: Path, module: str) -> subprocess.CompletedProcess[str]:
    """`mypy --strict` on `module` with shoal laid out as installed (scripts/lint_imports.py)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from lint_imports import lay_out
    finally:
        sys.path.pop(0)
    lay_out(tmp_path)
    (tmp_path / "shoal" / "py.typed").write_text("")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-version",
                           "3.11", "--follow-imports=silent", module], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_mypy_strict_passes_on_the_example_and_catches_misuse(tmp_path: Path) -> None:
    good = strict_mypy(tmp_path / "good", "examples/typed/tasks.py")
    assert good.returncode == 0, good.stdout + good.stderr
    (tmp_path / "good" / "bad_use.py").write_text(BAD_USE)
    bad = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
                          "bad_use.py"], cwd=tmp_path / "good", capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert '"Email" has no attribute "subjct"' in bad.stdout
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in bad.stdout
    assert "Callable[[Job[Email]], Coroutine[Any, Any, None]]" in bad.stdout
