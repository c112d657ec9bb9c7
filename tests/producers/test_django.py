"""shoal.contrib.django: the tests run against a real Django project (examples/django_app) with
pytest-django, in a pytest subprocess (see producing.run_django_suite), and `manage.py shoal_migrate`
as a real command on an empty database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from producing import DJANGO_EXAMPLE, ROOT, run_django_suite

from shoal import migrate


def test_contrib_in_a_django_project(qdb: str, server_url: str) -> None:
    run_django_suite(qdb, server_url, "check_contrib.py")


@pytest.fixture
async def empty_db(server_url: str) -> AsyncIterator[str]:
    name = "e_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(server_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    yield server_url.rpartition("/")[0] + "/" + name
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def manage(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONSAFEPATH": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, str(DJANGO_EXAMPLE / "manage.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_shoal_migrate_creates_and_upgrades_the_schema(empty_db: str) -> None:
    first = manage(empty_db, "shoal_migrate", "--target", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "Applied Shoal migrations 1, 2, 3 to 'default'."
    rest = manage(empty_db, "shoal_migrate")
    everything = [m.version for m in migrate.available()]
    assert rest.stdout.strip() == f"Applied Shoal migrations {', '.join(map(str, everything[3:]))} to 'default'."
    again = manage(empty_db, "shoal_migrate", "--database", "default")
    assert again.stdout.strip() == "Shoal's schema on 'default' is up to date."
    conn = await asyncpg.connect(empty_db)
    try:
        assert await migrate.pending(conn) == []  # the async tool agrees: nothing left to apply
    finally:
        await conn.close()
    check = manage(empty_db, "check")
    assert check.returncode == 0, check.stderr
