"""The Django example end to end: a view enqueues in the request's transaction, a real `shoal worker`
runs the job, and the waiting view reports its outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.test import Client

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "django_app"
pytestmark = pytest.mark.django_db(transaction=True)


def test_signup_then_wait_for_the_welcome_email(observer: psycopg.Connection[Any]) -> None:
    env = {**os.environ, "SHOAL_DATABASE_URL": os.environ["DATABASE_URL"], "PYTHONPATH": str(EXAMPLE)}
    env.pop("DJANGO_SETTINGS_MODULE")  # the worker needs no Django
    worker = subprocess.Popen([sys.executable, "-m", "shoal.cli", "worker", "--queue", "emails",
                               "--tasks", "shop.tasks"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        web = Client()
        created = web.post("/signups", {"email": "e@example.com"})
        assert created.status_code == 201, created.content
        job = created.json()["job"]
        done = web.get(f"/jobs/{job}?timeout=30")
        assert done.status_code == 200, done.content
        # The queue keeps no succeeded jobs (keep_succeeded 0): the row is gone, and the waiter says so.
        assert done.json() == {"job": job, "state": "succeeded", "attempts": None, "error": None, "pruned": True}
    finally:
        worker.terminate()
        worker.wait(30)
