"""`shoal console`'s HTTP API against a real PostgreSQL: reads open, actions behind the admin token
and CSRF, the same effects as the CLI, keyset pages that return every row once, data as text."""

from __future__ import annotations

import logging
import re

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from console_support import IMG, SCRIPT, TOKEN, console, failed_jobs

from shoal import client, queues
from shoal.client import NewJob
from shoal.console import queries
from shoal.console.auth import ADMIN_COOKIE, CSRF_COOKIE

TIMING = re.compile(r"^db;dur=\d+\.\d+, total;dur=\d+\.\d+$")


async def csrf_of(c: TestClient) -> str:
    """Get a page, which sets the CSRF cookie, and return its value from the page."""
    html = await (await c.get("/")).text()
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, html
    return m.group(1)


async def admin_headers(c: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "X-CSRF-Token": await csrf_of(c)}


async def test_read_only_console_serves_reads_and_refuses_actions(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "mail")
    job = await client.enqueue(conn, "mail", "send", {"to": "a@b.c"})
    async with console(db_url) as c:
        for path in ("/healthz", "/", "/jobs", f"/jobs/{job}", "/api/queues", "/api/jobs", f"/api/jobs/{job}"):
            r = await c.get(path)
            assert r.status == 200, (path, await r.text())
            assert TIMING.match(r.headers["Server-Timing"]), r.headers["Server-Timing"]
        assert await (await c.get("/healthz")).text() == "ok"
        (q,) = (await (await c.get("/api/queues")).json())["queues"]
        assert q["name"] == "mail" and q["counts"]["ready"]["n"] == 1 and q["paused"] is False
        html = await (await c.get("/")).text()
        assert "read-only" in html and 'class="action"' not in html, "no buttons without a token"
        headers = {"Authorization": "Bearer anything", "X-CSRF-Token": await csrf_of(c)}
        for path in (f"/api/jobs/{job}/cancel", f"/api/jobs/{job}/retry", "/api/queues/mail/pause",
                     "/api/jobs/retry-failed"):
            r = await c.post(path, headers=headers)
            assert r.status == 403 and "read-only" in (await r.json())["error"], path
            assert "Server-Timing" in r.headers
    assert (await client.get_job(conn, job))["state"] == "pending"


async def test_actions_need_the_token_and_the_csrf_token(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "mail")
    async with console(db_url, TOKEN) as c:
        csrf = await csrf_of(c)
        cases = [({}, "not logged in"), ({"X-CSRF-Token": csrf}, "not logged in"),
                 ({"Authorization": "Bearer wrong", "X-CSRF-Token": csrf}, "not logged in"),
                 ({"Authorization": f"Bearer {TOKEN}"}, "CSRF"),
                 ({"Authorization": f"Bearer {TOKEN}", "X-CSRF-Token": "forged"}, "CSRF")]
        for headers, why in cases:
            r = await c.post("/api/queues/mail/pause", headers=headers)
            assert r.status == 403 and why in (await r.json())["error"], headers
        assert not (await queues.get_queue(conn, "mail")).paused  # type: ignore[union-attr]
        # A browser: the login form (its own CSRF field), then the session cookie.
        r = await c.post("/login", data={"token": "wrong", "csrf_token": csrf, "next": "/"}, allow_redirects=False)
        assert r.status == 403 and ADMIN_COOKIE not in c.session.cookie_jar.filter_cookies(c.make_url("/"))
        r = await c.post("/login", data={"token": TOKEN, "csrf_token": "forged"}, allow_redirects=False)
        assert r.status == 403
        r = await c.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": "/jobs"},
                         allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/jobs"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        r = await c.post("/api/queues/mail/pause")
        assert r.status == 403 and "CSRF" in (await r.json())["error"], "a session cookie alone is not enough"
        r = await c.post("/api/queues/mail/pause", headers={"X-CSRF-Token": csrf})
        assert r.status == 200 and await r.json() == {"queue": "mail", "paused": True}
        assert 'class="action"' in await (await c.get("/")).text()
        r = await c.post("/logout", data={"csrf_token": csrf}, allow_redirects=False)
        assert r.status == 302
        r = await c.post("/api/queues/mail/resume", headers={"X-CSRF-Token": csrf})
        assert r.status == 403, "logged out"
    assert (await queues.get_queue(conn, "mail")).paused  # type: ignore[union-attr]


async def test_csrf_cookie_is_http_only_and_strict(db_url: str) -> None:
    async with console(db_url, TOKEN) as c:
        r = await c.get("/")
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(CSRF_COOKIE) and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_retry_cancel_pause_and_bulk_retry(db_url: str, conn: asyncpg.Connection,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.console")
    ids = await failed_jobs(db_url, conn, "work", 4)
    other = await failed_jobs(db_url, conn, "other", 2)
    pending = await client.enqueue(conn, "work", "later", delay=3600)
    async with console(db_url, TOKEN) as c:
        h = await admin_headers(c)
        r = await c.post(f"/api/jobs/{ids[0]}/retry", headers=h)
        assert r.status == 200 and (await client.get_job(conn, ids[0]))["state"] == "pending"
        r = await c.post(f"/api/jobs/{ids[0]}/retry", headers=h)
        assert r.status == 409 and "not failed" in (await r.json())["error"]
        r = await c.post(f"/api/jobs/{pending}/cancel", headers=h)
        assert r.status == 200 and (await r.json())["state"] == "cancelled"
        r = await c.post("/api/jobs/retry-failed", headers=h, json={"queue": "work"})
        assert r.status == 200 and await r.json() == {"count": 3, "more": False}
        assert {(await client.get_job(conn, i))["state"] for i in ids} == {"pending"}
        assert {(await client.get_job(conn, i))["state"] for i in other} == {"failed"}, "other queue untouched"
        r = await c.post("/api/jobs/retry-failed", headers=h, json={"queue": "Bad Name!"})
        assert r.status == 400 and (await r.json())["field"] == "queue"
        r = await c.post("/api/queues/work/pause", headers=h)
        assert r.status == 200 and (await queues.get_queue(conn, "work")).paused  # type: ignore[union-attr]
        api = (await (await c.get("/api/queues")).json())["queues"]
        assert [q["paused"] for q in api if q["name"] == "work"] == [True]
        r = await c.post("/api/queues/work/resume", headers=h)
        assert r.status == 200 and not (await queues.get_queue(conn, "work")).paused  # type: ignore[union-attr]
        actions = [(r.action, getattr(r, "queue", None) or getattr(r, "ids", None))  # type: ignore[attr-defined]
                   for r in caplog.records if r.name == "shoal.console"]
        assert actions[:3] == [("retry", str([ids[0]])), ("retry", str([ids[0]])), ("cancel", str([pending]))]
        assert actions[3:] == [("retry-failed", "work"), ("pause", "work"), ("resume", "work")]
        assert all(r.who == "admin" for r in caplog.records if r.name == "shoal.console")  # type: ignore[attr-defined]
        r = await c.post("/api/queues/nosuch/pause", headers=h)
        assert r.status == 404 and (await r.json())["field"] == "queue"
        r = await c.post("/api/queues/NO!/pause", headers=h)
        assert r.status == 400 and (await r.json())["field"] == "name"


async def test_bad_filters_are_400s_naming_the_field(db_url: str) -> None:
    async with console(db_url) as c:
        for query, field in [("queue=Bad!", "queue"), ("state=done", "state"), ("task=1x", "task"),
                             ("since=yesterday", "since"), ("since=2026-02-01&until=2026-01-01", "until"),
                             ("cursor=zzz", "cursor"), ("limit=0", "limit")]:
            r = await c.get(f"/api/jobs?{query}")
            assert r.status == 400 and (await r.json())["field"] == field, query
        r = await c.get("/jobs?state=done")
        assert r.status == 400 and "state" in await r.text()
        assert (await c.get("/api/jobs/abc")).status == 400
        assert (await c.get("/api/jobs/999999")).status == 404


async def _all_pages(c: TestClient, query: str) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(1000):
        r = await c.get(f"/api/jobs?{query}&limit=7" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status == 200, await r.text()
        data = await r.json()
        seen += [j["id"] for j in data["jobs"]]
        cursor = data["next_cursor"]
        if not cursor:
            return seen
    raise AssertionError("pages never ended")


async def test_keyset_pages_return_every_row_exactly_once(db_url: str, conn: asyncpg.Connection,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    await queues.declare_queue(conn, "pg")
    await queues.declare_queue(conn, "pq")
    ids = await client.enqueue_many(conn, [NewJob("pg", "a" if i % 5 else "b", {"i": i}, priority=i % 3,
                                                  delay=(i % 4) * 10) for i in range(60)])
    other = await client.enqueue_many(conn, [NewJob("pq", "a") for _ in range(9)])
    # Finished jobs sharing finished_at values (ties broken by id), and running ones.
    await conn.execute("UPDATE shoal.jobs SET state = 'failed', finished_at = now() - (id % 3) * interval '1 s' "
                       "WHERE id = ANY($1)", ids[:25])
    await conn.execute("UPDATE shoal.jobs SET state = 'running', worker_id = 'w' WHERE id = ANY($1)", ids[25:36])
    pending, failed, running = ids[36:], ids[:25], ids[25:36]
    async with console(db_url) as c:
        assert sorted(await _all_pages(c, "queue=pg&state=pending")) == sorted(pending)
        assert await _all_pages(c, "queue=pg&state=failed") != []
        got = await _all_pages(c, "queue=pg&state=failed")
        assert sorted(got) == sorted(failed) and len(got) == len(set(got))
        assert sorted(await _all_pages(c, "queue=pg&state=running")) == sorted(running)
        assert await _all_pages(c, "state=running") == sorted(running, reverse=True)
        assert await _all_pages(c, "") == sorted(ids + other, reverse=True)
        # Filters the index cannot apply, with a tiny scan limit: short pages, but every row once.
        monkeypatch.setattr(queries, "SCAN_LIMIT", 4)
        b = [i for n, i in enumerate(ids) if n % 5 == 0]
        assert sorted(await _all_pages(c, "task=b")) == sorted(b)
        assert sorted(await _all_pages(c, "queue=pg&state=failed&task=b")) == sorted(set(b) & set(failed))
        assert sorted(await _all_pages(c, "queue=pg&state=pending&task=b")) == sorted(set(b) & set(pending))
        data = await (await c.get("/api/jobs?task=b&limit=50")).json()
        assert data["partial"] is True and data["next_cursor"]
        # Order: claim order for pending jobs, newest finished first for finished ones.
        monkeypatch.undo()
        rows = (await (await c.get("/api/jobs?queue=pg&state=pending&limit=100")).json())["jobs"]
        keys = [(-j["priority"], j["run_at"], j["id"]) for j in rows]
        assert keys == sorted(keys)
        r = await c.get("/api/jobs?queue=pg&state=failed&cursor=" +
                        (await (await c.get("/api/jobs?queue=pg&state=pending&limit=1")).json())["next_cursor"])
        assert r.status == 400 and (await r.json())["field"] == "cursor"


async def test_user_data_is_rendered_as_text(db_url: str, conn: asyncpg.Connection) -> None:
    (job,) = await failed_jobs(db_url, conn, "xss", 1)
    key = await client.enqueue(conn, "xss", f"t{SCRIPT[:0]}", {"html": IMG}, unique_key="<b>key</b>")
    async with console(db_url, TOKEN) as c:
        for path in (f"/jobs/{job}", f"/jobs/{key}", "/jobs?queue=xss", "/jobs?queue=xss&state=failed", "/"):
            html = await (await c.get(path)).text()
            assert "<script>alert" not in html and "<img src=x" not in html and "<b>key" not in html, path
        html = await (await c.get(f"/jobs/{job}")).text()
        assert "&lt;script&gt;alert(&#x27;payload&#x27;)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html and "in explode" in html
        data = await (await c.get(f"/api/jobs/{job}")).json()
        assert data["payload"]["why"] == SCRIPT and IMG in data["errors"][0]["error"]
        assert "in explode" in data["errors"][0]["traceback"]
        # Lookup by id and by unique key lead to the job.
        r = await c.get(f"/jobs?lookup={job}", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == f"/jobs/{job}"
        r = await c.get("/jobs", params={"lookup": "<b>key</b>"}, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == f"/jobs/{key}"
        assert (await c.get("/jobs?lookup=nothing-like-it")).status == 404


async def test_the_console_overview_shows_the_reported_throughput(db_url: str, conn: asyncpg.Connection) -> None:
    await queues.declare_queue(conn, "shown")
    await queues.declare_queue(conn, "quiet")
    # Two live workers: 120 runs over 2 s and 30 runs over 3 s since their previous beats.
    await conn.execute("""
        INSERT INTO shoal.workers (id, queue, heartbeat_at, prev_heartbeat_at, runs, prev_runs)
        VALUES ('a-1-x', 'shown', now(), now() - interval '2 seconds', 1120, 1000),
               ('b-1-x', 'shown', now(), now() - interval '3 seconds', 30, 0)""")
    async with console(db_url) as c:
        body = await (await c.get("/api/queues")).json()
        html = await (await c.get("/")).text()
    rates = {q["name"]: (q["throughput_reporting"], round(q["throughput_per_minute"])) for q in body["queues"]}
    assert rates == {"shown": (2, (60 + 10) * 60), "quiet": (0, 0)}
    assert "4200" in html
