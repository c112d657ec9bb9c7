"""Forward-only schema migrations from the packaged `shoal.sql` files.

Only the top-level `sql/NNN_name.sql` files are migrations. `sql/current/` (one file per table,
function and type, as a fresh migrate leaves them) is generated from them by scripts/dump_schema.py
for readers: it is not applied here, and it is not shipped in the package.

Several pods may run `shoal migrate` at once (every worker's init container, the Helm
hook, the operator): a session advisory lock makes them take turns, and each file is
applied in its own transaction and recorded, so reruns are no-ops.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger("shoal.migrate")

# pg_advisory_lock key: the bytes "shoalmig" read as a big-endian integer.
_LOCK_KEY = int.from_bytes(b"shoalmig", "big") & 0x7FFF_FFFF_FFFF_FFFF
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS shoal;
CREATE TABLE IF NOT EXISTS shoal.migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""
# The statements around the files, shared with shoal.sync.migrate (psycopg), so that either driver
# keeps the same lock and bookkeeping.
LOCK = "SELECT pg_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
APPLIED = "SELECT version FROM shoal.migrations"
RECORD = "INSERT INTO shoal.migrations (version, name) VALUES ($1, $2)"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped in the package, in order."""
    found = []
    for entry in resources.files("shoal.sql").iterdir():
        m = _FILE.match(entry.name)
        if m and entry.is_file():
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 001, 002, … without gaps; found {versions}")
    return found


def to_apply(done: set[int], target: int | None) -> list[Migration]:
    """The shipped migrations not in `done`, numbered up to `target` (all when None), in order."""
    return [mig for mig in available() if mig.version not in done and (target is None or mig.version <= target)]


async def migrate(database_url: str, target: int | None = None) -> list[int]:
    """Apply every pending migration (up to `target`); returns the versions applied by this call."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate_connection(conn, target)
    finally:
        await conn.close()


async def migrate_connection(conn: asyncpg.Connection, target: int | None = None) -> list[int]:
    """Apply the pending migrations numbered up to `target` (all of them by default; 0 only
    creates the `shoal` schema and its bookkeeping table)."""
    applied_now: list[int] = []
    await conn.execute(LOCK, _LOCK_KEY)
    try:
        await conn.execute(_BOOTSTRAP)
        done = {r["version"] for r in await conn.fetch(APPLIED)}
        for mig in to_apply(done, target):
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(RECORD, mig.version, mig.name)
            log.info("applied migration", extra={"version": mig.version, "migration": mig.name})
            applied_now.append(mig.version)
    finally:
        await conn.execute(UNLOCK, _LOCK_KEY)
    return applied_now


async def pending(conn: asyncpg.Connection) -> list[int]:
    """Versions not yet applied: workers refuse to start on an old schema."""
    exists = await conn.fetchval("SELECT to_regclass('shoal.migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {r["version"] for r in await conn.fetch(APPLIED)}
    return [m.version for m in to_apply(done, None)]
