"""At-least-once delivery, proven by doing the damage to real processes:
kill -9 of a worker, SIGTERM during a run, and a PostgreSQL crash-restart under load."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import pytest

from helpers import eventually, spawn_worker
from shoal import client, queues
from shoal.client import NewJob
from shoal.embedded import EmbeddedPostgres

FAST_RESCUE = ("--heartbeat-interval", "0.5", "--stale-after", "3", "--poll-interval", "0.2")


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT state::text, count(*) FROM shoal.jobs GROUP BY 1")
    return {r["state"]: r["count"] for r in rows}


def stop(proc, sig: int = signal.SIGTERM, timeout: float = 30) -> int:  # type: ignore[no-untyped-def]
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


@pytest.mark.slow
async def test_kill_9_loses_no_job(db_url: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    n = 5000
    await queues.declare_queue(conn, "k9", keep_succeeded_seconds=3600)
    # Varied durations keep jobs in flight at every instant, so the kill always hits some.
    await client.enqueue_many(conn, [NewJob("k9", "test.sleep_ms", {"ms": 20 + i % 40}) for i in range(n)])
    first = spawn_worker(db_url, "k9", "--concurrency", "50", *FAST_RESCUE, log_path=tmp_path / "w1.log")
    second = None
    try:
        await eventually(lambda: _at_least(conn, "succeeded", 800), timeout=60)
        await eventually(lambda: _at_least(conn, "running", 1), timeout=10, interval=0.001)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert (await counts(conn)).get("running", 0) > 0, "the kill must hit jobs in flight"
        second = spawn_worker(db_url, "k9", "--concurrency", "50", *FAST_RESCUE, log_path=tmp_path / "w2.log")
        await eventually(lambda: _at_least(conn, "succeeded", n), timeout=120, interval=0.5)
        assert await counts(conn) == {"succeeded": n}
        assert await conn.fetchval("SELECT count(*) FROM shoal.jobs WHERE suspect") > 0, \
            "jobs in flight at the kill were rescued and run again, alone"
        assert await conn.fetchval("SELECT max(attempts) FROM shoal.jobs") == 1, \
            "a kill among 50 running jobs charges none of them an attempt"
    finally:
        first.kill()
        if second is not None:
            assert stop(second) == 0


@pytest.mark.slow
async def test_sigterm_drains_then_releases_unfinished(db_url: str, conn: asyncpg.Connection,
                                                       tmp_path: Path) -> None:
    await queues.declare_queue(conn, "term", keep_succeeded_seconds=3600)
    short = await client.enqueue_many(conn, [NewJob("term", "shoal.sleep", {"seconds": 0.5}) for _ in range(2)])
    long = await client.enqueue_many(conn, [NewJob("term", "shoal.sleep", {"seconds": 60}) for _ in range(3)])
    waiting = await client.enqueue_many(conn, [NewJob("term", "shoal.sleep", {"seconds": 60}) for _ in range(4)])
    proc = spawn_worker(db_url, "term", "--concurrency", "5", "--drain-timeout", "3", *FAST_RESCUE,
                        log_path=tmp_path / "w.log")
    try:
        await eventually(lambda: _at_least(conn, "running", 5), timeout=30)
        # `running` is written by the claim, a moment before the worker's runners start the
        # handlers; a stop in between rightly gives the jobs back unstarted. Let them start.
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        # It must exit by itself (no kill): 60 s jobs cannot finish, so only the 3 s drain
        # timeout followed by a release lets it go; the states below prove which happened.
        code = await asyncio.to_thread(proc.wait, 20)
    finally:
        proc.kill()
    assert code == 0, (tmp_path / "w.log").read_text()[-2000:]
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, state::text, attempts, worker_id FROM shoal.jobs")}
    assert all(rows[i]["state"] == "succeeded" for i in short), "running jobs finish within the drain timeout"
    for i in long + waiting:
        assert (rows[i]["state"], rows[i]["attempts"], rows[i]["worker_id"]) == ("pending", 0, None), \
            "unfinished jobs go back without using an attempt"
    assert await conn.fetchval("SELECT count(*) FROM shoal.workers") == 0


# Leased: jobs long enough to be claimed as leases, crashed once 300 have succeeded. Held: no-op
# jobs, crashed while a held batch (sql/004_held_claims.sql) is open, its transaction in hand.
CRASH_MODES = {
    "leased": (3000, "test.sleep_ms", {"ms": 20}, "20",
               "SELECT count(*) >= 300 FROM shoal.jobs WHERE state = 'succeeded'"),
    "held": (40_000, "shoal.noop", {}, "100", "SELECT count(*) > 0 FROM shoal.held_batches"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(CRASH_MODES))
async def test_database_crash_restart_loses_no_job(db_url: str, conn: asyncpg.Connection, tmp_path: Path,
                                                   pg_server: EmbeddedPostgres | None, mode: str) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server to restart it (SHOAL_TEST_DATABASE_URL points elsewhere)")
    n, task, payload, concurrency, mid_flight = CRASH_MODES[mode]
    await queues.declare_queue(conn, "dbr", keep_succeeded_seconds=3600)
    await client.enqueue_many(conn, [NewJob("dbr", task, payload) for _ in range(n)])
    await conn.close()
    proc = spawn_worker(db_url, "dbr", "--concurrency", concurrency, "--heartbeat-interval", "0.5",
                        "--stale-after", "30", log_path=tmp_path / "w.log")
    try:
        watcher = await asyncpg.connect(db_url)
        await eventually(lambda: watcher.fetchval(mid_flight), timeout=60, interval=0.001)
        await watcher.close()
        pg_server.stop("immediate")  # a crash: connections die mid-transaction
        await asyncio.sleep(1.0)
        pg_server.start()
        watcher = await asyncpg.connect(db_url)
        try:
            await eventually(lambda: _at_least(watcher, "succeeded", n), timeout=120, interval=0.5)
        except AssertionError:
            raise AssertionError(f"{await counts(watcher)}; worker log tail:\n"
                                 + (tmp_path / "w.log").read_text()[-3000:]) from None
        assert await counts(watcher) == {"succeeded": n}
        await watcher.close()
        assert stop(proc) == 0
    finally:
        proc.kill()
    log = (tmp_path / "w.log").read_text()
    assert any(sign in log for sign in ("database connection lost", "lost a held batch")), \
        "the worker noticed the outage and recovered"


async def _at_least(conn: asyncpg.Connection, state: str, n: int) -> bool:
    return (await counts(conn)).get(state, 0) >= n
