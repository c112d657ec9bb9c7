"""sql/current/ is exactly the schema a fresh `shoal migrate` makes, so it can never go stale.

scripts/dump_schema.py writes it from the catalog; when a migration changes the schema, the test
fails with the command that regenerates the files. The migrations stay the source of truth:
sql/current/ is neither applied nor shipped.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest

from shoal import migrate

REPO_ROOT = Path(__file__).resolve().parents[2]


def dump_schema() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dump_schema", REPO_ROOT / "scripts" / "dump_schema.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def empty_db(server_url: str) -> AsyncIterator[str]:
    """A new database with nothing in it (not the migrated template)."""
    name = "fresh_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield server_url.rpartition("/")[0] + "/" + name
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_sql_current_is_what_a_fresh_migrate_makes(server_url: str, empty_db: str) -> None:
    ds = dump_schema()
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_DATABASE_URL", "DATABASE_URL")}
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "shoal.cli", "--database-url", empty_db, "migrate"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    conn = await asyncpg.connect(empty_db)
    try:
        migrated = await ds.dump(conn)
        major = await ds.server_major(conn)
    finally:
        await conn.close()

    documented = ds.on_disk()
    assert documented, f"sql/current/ is missing: generate it with `{ds.REGENERATE}`"
    written_on = re.search(r"PostgreSQL (\d+)", documented["README.md"])
    if written_on and int(written_on.group(1)) != major:
        pytest.skip(f"sql/current/ is written from PostgreSQL {written_on.group(1)}'s catalog, this server is {major}")

    # One migration at a time (for each file's history) ends where `shoal migrate` does...
    steps, _ = await ds.steps_from_scratch(server_url)
    assert steps[-1].objects == migrated
    # ...and the files say exactly that.
    stale = ds.diff(ds.render(steps, migrate.available(), major), documented)
    assert not stale, (
        f"sql/current/ is not what a fresh `shoal migrate` makes: regenerate it with `{ds.REGENERATE}`\n"
        + stale[:8000]
    )


def test_sql_current_is_neither_a_migration_nor_shipped() -> None:
    assert (REPO_ROOT / "sql" / "current" / "README.md").is_file()
    top_level = sorted(p.name for p in (REPO_ROOT / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    assert [f"{m.version:03d}_{m.name}.sql" for m in migrate.available()] == top_level
    # The package ships shoal.sql's package data: its patterns must not reach into current/.
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in package_data.get("shoal.sql", []) for p in (REPO_ROOT / "sql").glob(pattern)}
    assert shipped == {REPO_ROOT / "sql" / name for name in top_level}
