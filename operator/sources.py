"""Resolving what a resource points at (its database URL, a CronJob's Queue) into values,
or into a `Problem` whose message names the field to fix."""

from __future__ import annotations

from typing import Any

import asyncpg

from shoal.operator import kube
from shoal.operator.conditions import DATABASE_REACHABLE, QUEUE_FOUND
from shoal.operator.databases import Databases
from shoal.operator.problems import Problem
from shoal.operator.queue_spec import SecretRef


async def database_url(namespace: str, secret_ref: SecretRef, *, where: str = "") -> str:
    """The PostgreSQL URL from ``spec.databaseSecretRef`` (``where`` prefixes the field when the
    reference lives on another resource, e.g. a CronJob's Queue)."""
    name, key = secret_ref.name, secret_ref.key
    field = f"{where}spec.databaseSecretRef"
    try:
        value = await kube.read_secret_value(namespace, name, key)
    except kube.NotFound:
        raise Problem(DATABASE_REACHABLE, "SecretNotFound",
                      f"{field}.name: Secret {name!r} not found in namespace {namespace!r}; create it with "
                      f"key {key!r} holding the PostgreSQL URL, or point {field}.name at an existing Secret") from None
    if not value:
        raise Problem(DATABASE_REACHABLE, "SecretKeyMissing",
                      f"{field}.key: Secret {name!r} has no key {key!r}; add the PostgreSQL URL under that key "
                      f"or set {field}.key to the key that holds it")
    if not value.startswith(("postgres://", "postgresql://")):
        raise Problem(DATABASE_REACHABLE, "InvalidDatabaseURL",
                      f"{field}: the value of Secret {name!r} key {key!r} is not a PostgreSQL URL; store "
                      "postgresql://user:password@host:5432/database there")
    return value


async def database_pool(databases: Databases, url: str, *, where: str = "") -> asyncpg.Pool:
    """A migrated pool, or a Problem that says which Secret to check (never the URL: it may hold
    a password, and conditions and Events are readable by many)."""
    try:
        return await databases.pool(url)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Problem(DATABASE_REACHABLE, "DatabaseUnreachable",
                      f"{where}spec.databaseSecretRef: cannot connect to the database in the referenced Secret "
                      f"({type(exc).__name__}); check the URL in the Secret, the database and network "
                      "policies; retrying with backoff") from None


async def referenced_queue(namespace: str, name: str) -> dict[str, Any]:
    """A CronJob's ``spec.queueRef``: the Queue resource itself."""
    try:
        return await kube.read_queue(namespace, name)
    except kube.NotFound:
        raise Problem(QUEUE_FOUND, "QueueNotFound",
                      f"spec.queueRef.name: Queue {name!r} not found in namespace {namespace!r}; create it or "
                      "point spec.queueRef.name at an existing Queue") from None
