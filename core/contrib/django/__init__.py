"""Django: enqueue jobs in the request's transaction, through Django's own database connection.

`pip install 'shoal[django]'`, add "shoal.contrib.django" to INSTALLED_APPS, run
`manage.py shoal_migrate`, and call `enqueue(...)` in a view: the job is written on
`django.db.connections[alias]` (its psycopg 3 connection), so inside `transaction.atomic()` (or with
ATOMIC_REQUESTS) it exists only if the transaction commits. Settings:

    SHOAL = {"DATABASE": "default"}   # the alias of the database holding Shoal's schema
"""

from __future__ import annotations

from shoal.extras import require_module_extra

require_module_extra("django", "shoal.contrib.django")

from collections.abc import Iterable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.db import DEFAULT_DB_ALIAS, connections  # noqa: E402

from shoal import sync  # noqa: E402
from shoal.jobs import JobResult, NewJob  # noqa: E402

__all__ = ["JobResult", "NewJob", "cancel", "connection", "database_alias", "enqueue", "enqueue_many", "wait_for"]

# Keys of Django's connection parameters that are psycopg objects, not libpq options.
_NOT_LIBPQ = {"cursor_factory", "context", "prepare_threshold", "row_factory", "autocommit"}


def database_alias(using: str | None = None) -> str:
    """`using`, else settings.SHOAL["DATABASE"], else "default"."""
    if using:
        return using
    alias = getattr(settings, "SHOAL", {}).get("DATABASE", DEFAULT_DB_ALIAS)
    if alias not in settings.DATABASES:
        raise ImproperlyConfigured(f'SHOAL["DATABASE"] is {alias!r}, which is not in settings.DATABASES')
    return str(alias)


def connection(using: str | None = None) -> psycopg.Connection[Any]:
    """The psycopg 3 connection under Django's connection `using` (opened if need be). Statements on
    it share Django's transaction: in an atomic block Django has turned its autocommit off."""
    wrapper = connections[database_alias(using)]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(f"Shoal needs PostgreSQL; database {wrapper.alias!r} is {wrapper.vendor}")
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise ImproperlyConfigured(f"database {wrapper.alias!r} does not use psycopg 3 (psycopg2?): "
                                   "pip install 'psycopg[binary]>=3.2'")
    return raw


def enqueue(queue: str, task: str, payload: Any = None, *, using: str | None = None, **options: Any) -> int:
    """Add one job in the current transaction of Django's connection; returns its id.
    `options`: priority, run_at, delay, max_attempts, unique_key (as shoal.sync.enqueue)."""
    return sync.enqueue(connection(using), queue, task, payload, **options)


def enqueue_many(jobs: Iterable[NewJob], *, using: str | None = None) -> list[int]:
    """Add many jobs in the current transaction of Django's connection; ids in input order."""
    return sync.enqueue_many(connection(using), jobs)


def cancel(ids: Sequence[int], *, using: str | None = None) -> dict[int, str]:
    """Cancel jobs (on Django's connection: in the current transaction, if any)."""
    return sync.cancel(connection(using), ids)


def wait_for(job_id: int, timeout: float | None = None, *, using: str | None = None) -> JobResult:
    """Block until the job is final. On a connection of its own, opened with Django's parameters:
    the request's connection may be inside a transaction, which would hide completions from it
    (and notifications too); a job enqueued in that same transaction cannot run before it commits."""
    params = connections[database_alias(using)].get_connection_params()
    with psycopg.connect(autocommit=True, **{k: v for k, v in params.items() if k not in _NOT_LIBPQ}) as conn:
        return sync.wait(conn, [job_id], timeout=timeout)[job_id]
