"""The console in a real browser: `shoal console` as a real process, Debian Chromium driven by
Playwright. Log in, find a failed job, read its traceback, retry it and watch it change without a
reload, pause a queue. With SHOAL_SCREENSHOTS=1 it saves the docs' screenshots (docs/console-*.png)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from console_support import TOKEN

from helpers import TESTS_DIR, running_worker
from shoal import client, manage, queues
from shoal.client import NewJob
from shoal.ratelimit import parse_rate_limit
from shoal.tasks import Job, TaskRegistry, task

CHROMIUM = "/usr/bin/chromium"
DOCS = TESTS_DIR.parent / "docs"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent (scripts/setup.sh installs Debian's chromium)")


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @task("send_email", registry=reg)
    async def send_email(job: Job) -> None:
        if "@" not in job.payload["to"]:
            deliver(job.payload["to"])

    return reg


def deliver(address: str) -> None:
    raise ConnectionRefusedError(f"smtp.example.com:25 refused the connection for {address!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def console_process(db_url: str) -> Iterator[str]:
    """`shoal console` as a user runs it, the admin token in its environment; its base URL."""
    port = free_port()
    env = {**os.environ, "SHOAL_CONSOLE_ADMIN_TOKEN": TOKEN, "PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "--log-format", "json", "console",
                             "--host", "127.0.0.1", "--port", str(port), "--database-url", db_url],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                import time

                time.sleep(0.05)
        else:
            raise AssertionError("shoal console did not answer /healthz")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


async def seed(db_url: str, conn: asyncpg.Connection) -> list[int]:
    """Two queues with jobs in every state; the failed ones really failed in a worker."""
    await queues.declare_queue(conn, "emails", concurrency_limit=20, keep_succeeded_seconds=3600)
    await queues.declare_queue(conn, "reports", rate_limit=parse_rate_limit("10/s"))
    jobs = [NewJob("emails", "send_email", {"to": f"user{i}@example.com"}, max_attempts=2) for i in range(12)]
    jobs += [NewJob("emails", "send_email", {"to": f"user{i}.example.com", "template": "welcome"}, max_attempts=2)
             for i in range(3)]
    ids = await client.enqueue_many(conn, jobs)
    async with running_worker(db_url, "emails", registry(), held_claims=False, backoff_base=0.01,
                              backoff_cap=0.02):
        await client.wait(conn, ids, timeout=30)
    await client.enqueue_many(conn, [NewJob("emails", "send_email", {"to": f"later{i}@example.com"})
                                     for i in range(5)])
    await client.enqueue_many(conn, [NewJob("reports", "daily_report", {"day": f"2026-12-0{i}"}, delay=3600 * i)
                                     for i in range(1, 7)])
    return ids[12:]


async def test_console_in_a_real_browser(db_url: str, conn: asyncpg.Connection, console_process: str) -> None:
    from playwright.async_api import async_playwright, expect

    failed = await seed(db_url, conn)
    base = console_process
    shots = os.environ.get("SHOAL_SCREENSHOTS") == "1"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 760})
            page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
            await page.goto(f"{base}/")
            await expect(page.locator("#queues")).to_contain_text("emails")
            assert await page.locator("button.action").count() == 0, "no actions before logging in"
            # Log in with the token.
            await page.click("text=log in as admin")
            await page.fill('input[name="token"]', TOKEN)
            await page.click('form.login button')
            await expect(page.locator(".badge.admin")).to_be_visible()
            await expect(page.locator('[data-q="emails"][data-f="failed"]')).to_have_text("3")
            if shots:
                await page.screenshot(path=str(DOCS / "console-overview.png"), full_page=True)
            # Filter the failed jobs.
            await page.click("header nav >> text=Jobs")
            await page.select_option('select[name="queue"]', "emails")
            await page.select_option('select[name="state"]', "failed")
            await page.click(".filters button")
            rows = page.locator("#jobs tbody tr")
            await expect(rows).to_have_count(3)
            await expect(rows.first.locator("td.state")).to_have_text("failed")
            if shots:
                await page.screenshot(path=str(DOCS / "console-jobs.png"), full_page=True)
            # Open one: its traceback, every attempt.
            job_id = int(await rows.first.get_attribute("data-id") or 0)
            assert job_id in failed
            await rows.first.locator("a").first.click()
            await expect(page.locator("h1")).to_have_text(f"Job {job_id}")
            await expect(page.locator("section.attempt")).to_have_count(2)
            await expect(page.locator("pre.traceback").first).to_contain_text("in deliver")
            await expect(page.locator("pre.traceback").first).to_contain_text("ConnectionRefusedError")
            if shots:
                await page.screenshot(path=str(DOCS / "console-job.png"), full_page=True)
            # Retry it (the confirm dialog is accepted); the state changes in place, no reload.
            await page.evaluate("window.notReloaded = true")
            await page.click("button.action:has-text('Retry')")
            state = page.locator('dd[data-f="state"]')
            await expect(state).to_have_text("pending")
            assert (await manage.get_job(conn, job_id) or {})["state"] == "pending"
            # A change made elsewhere (the CLI's cancel) shows up by the live update alone.
            await manage.cancel(conn, [job_id])
            await expect(state).to_have_text("cancelled", timeout=8000)
            await expect(page.locator("button.action:has-text('Retry')")).to_be_visible()
            assert await page.evaluate("window.notReloaded") is True
            # Pause a queue.
            await page.click("header nav >> text=Queues")
            await page.locator('tr:has(td[data-q="reports"]) button.action:has-text("Pause")').click()
            await expect(page.locator('[data-q="reports"][data-f="paused"]')).to_have_text("paused")
            assert (await queues.get_queue(conn, "reports")).paused  # type: ignore[union-attr]
            await expect(page.locator('tr:has(td[data-q="reports"]) button.action:has-text("Resume")')).to_be_visible()
        finally:
            await browser.close()
