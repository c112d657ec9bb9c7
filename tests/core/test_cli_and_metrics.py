"""The CLI contract and the worker's metrics/health endpoints, as users and Kubernetes see them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import asyncpg

from helpers import eventually, running_worker
from shoal import client, queues
from shoal.client import NewJob
from shoal.embedded import free_port


def shoal(db_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_DATABASE_URL", "DATABASE_URL")}
    if db_url:
        env["SHOAL_DATABASE_URL"] = db_url
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_cli_contract(db_url: str, conn: asyncpg.Connection) -> None:
    def ok(*args: str) -> str:
        res = shoal(db_url, *args)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "up to date" in ok("migrate")
    ok("queue", "create", "emails")
    ok("queue", "create", "emails")  # idempotent
    ok("queue", "create", "emails", "--rate-limit", "100/s", "--concurrency-limit", "4")
    cfg = await queues.get_queue(conn, "emails")
    assert cfg is not None and str(cfg.rate_limit) == "100/s" and cfg.concurrency_limit == 4
    ok("enqueue", "--queue", "emails", "--task", "send", "--payload", '{"to": "a@b.c"}', "--count", "3")
    stats = json.loads(ok("stats", "--queue", "emails", "--json"))
    assert stats[0]["queue"] == "emails" and stats[0]["ready"] == 3
    listed = ok("jobs", "list", "--queue", "emails", "--state", "pending")
    assert listed.count("\tsend\tpending\t") == 3
    ids = [int(line.split("\t")[0]) for line in listed.splitlines()[1:]]
    assert "cancelled" in ok("jobs", "cancel", str(ids[0]))
    assert "retrying 1 job(s)" in ok("jobs", "retry", str(ids[0]))
    ok("queue", "pause", "emails")
    assert (await queues.get_queue(conn, "emails")).paused  # type: ignore[union-attr]
    ok("queue", "resume", "emails")

    bad = shoal(db_url, "enqueue", "--queue", "emails", "--task", "send", "--payload", "{oops")
    assert bad.returncode == 2 and "--payload" in bad.stderr
    ghost = shoal(db_url, "enqueue", "--queue", "ghost", "--task", "send")
    assert ghost.returncode == 2 and "unknown queue 'ghost'" in ghost.stderr
    nodb = shoal(None, "stats")
    assert nodb.returncode == 2 and "SHOAL_DATABASE_URL" in nodb.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_metrics_and_probes(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "m")
    port = free_port()
    async with running_worker(db_url, "m", metrics_port=port, backoff_base=30) as worker:
        base = f"http://127.0.0.1:{port}"
        assert (await asyncio.to_thread(get, base + "/healthz"))[0] == 200
        assert (await asyncio.to_thread(get, base + "/readyz"))[0] == 200
        ids = await client.enqueue_many(conn, [NewJob("m", "shoal.noop") for _ in range(3)])
        ids.append(await client.enqueue(conn, "m", "shoal.sleep", {"seconds": "x"}))
        ids.append(await client.enqueue(conn, "m", "ghost.task", max_attempts=3))
        await client.wait(conn, ids, timeout=20)

        async def scraped() -> str | None:
            status, body = await asyncio.to_thread(get, base + "/metrics")
            return body if 'shoal_jobs_succeeded_total{queue="m",task="shoal.noop"} 3.0' in body else None

        body = await eventually(scraped, timeout=10)
        assert 'shoal_jobs_failed_total{queue="m",task="shoal.sleep"} 1.0' in body
        # No handler for ghost.task: labelled with the one fixed value, not its name.
        assert 'shoal_jobs_failed_total{queue="m",task="unregistered"} 1.0' in body
        assert 'task="ghost.task"' not in body
        assert 'shoal_jobs_claimed_total{queue="m",task="shoal.noop"} 3.0' in body
        assert 'shoal_job_duration_seconds_count{queue="m",task="shoal.noop"} 3.0' in body
        assert 'shoal_job_queue_wait_seconds_bucket' in body
        assert 'shoal_jobs_in_flight{queue="m"} 0.0' in body
        assert (await asyncio.to_thread(get, base + "/nope"))[0] == 404
        worker.request_stop()
        assert worker.ready() is False, "a draining worker reports not ready"
