"""Shoal's migrations applied through a psycopg connection (Django's `shoal_migrate` uses it).

The same files, lock and bookkeeping as shoal.migrate (asyncpg), so either tool can migrate a
database the other started: through the application's own connection, with its credentials and
options, rather than a second driver and a DSN rebuilt from framework settings.
"""

from __future__ import annotations

from shoal.migrate import _BOOTSTRAP, _LOCK_KEY, APPLIED, LOCK, RECORD, UNLOCK, to_apply
from shoal.sync._db import Connection, cursor


def migrate(conn: Connection, target: int | None = None) -> list[int]:
    """Apply the pending migrations numbered up to `target` (all by default), each in its own
    transaction; returns the versions applied. `conn` must be in autocommit mode (outside any
    transaction): the advisory lock is held for the session, across the migrations' transactions."""
    if not conn.autocommit:
        raise ValueError("shoal.sync.migrate needs a connection in autocommit mode (outside a transaction)")
    applied: list[int] = []
    with cursor(conn) as cur:
        cur.execute(LOCK, (_LOCK_KEY,))
        try:
            cur.execute(_BOOTSTRAP)
            cur.execute(APPLIED)
            done = {row[0] for row in cur.fetchall()}
            for mig in to_apply(done, target):
                with conn.transaction():
                    cur.execute(mig.sql)
                    cur.execute(RECORD, (mig.version, mig.name))
                applied.append(mig.version)
        finally:
            cur.execute(UNLOCK, (_LOCK_KEY,))
    return applied
