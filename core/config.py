"""What the user gave us (database URL, flags, payload) and what to say when it is wrong.

Flags first, then the environment. Everything is checked before a connection, and failures
users meet become one line naming what to fix (`explain`): a typo in a URL or a wrong
password is not a driver traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from shoal.errors import ConfigError, ShoalError, ValidationError

ENV_URL = "SHOAL_DATABASE_URL"
EXPECTED = "postgresql://user:pass@host:5432/db"
CONNECT_TIMEOUT = 10.0
# A single `shoal enqueue`: 10M jobs is minutes of work and gigabytes of table; more is a typo.
MAX_ENQUEUE_COUNT = 10_000_000
# A worker silent this long is dead: other workers rescue its jobs (the worker's --stale-after default),
# and every reader that counts live workers (metrics, the console, pod deletion costs) uses the same window.
STALE_AFTER = 30.0


# -- the database ------------------------------------------------------------------------------
def database_url_source(explicit: str | None = None) -> str:
    """The flag or variable the URL comes from, for error messages that say what to fix."""
    if explicit:
        return "--database-url"
    return ENV_URL if os.environ.get(ENV_URL) else "DATABASE_URL"


def database_url(explicit: str | None = None, *, required: bool = True) -> str | None:
    url = explicit or os.environ.get(ENV_URL) or os.environ.get("DATABASE_URL")
    if not url:
        if required:
            raise ConfigError(f"no database: pass --database-url or set {ENV_URL}={EXPECTED}")
        return None
    check_url(url, database_url_source(explicit))
    return url


def check_url(url: str, source: str) -> None:
    """Reject what asyncpg would reject with a traceback; never echo the URL (it may hold a password)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(f"{source}: not a valid URL ({exc}); expected {EXPECTED}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ConfigError(f"{source}: not a PostgreSQL URL ({got}); expected {EXPECTED}")
    if not parts.netloc and "host=" not in parts.query and not os.environ.get("PGHOST"):
        raise ConfigError(f"{source}: no host in the URL; expected {EXPECTED}")


def _server(explicit: str | None) -> tuple[str, str]:
    """Where the URL points (host:port, never the password) and where it was set."""
    try:
        parts = urlsplit(database_url(explicit, required=False) or "")
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except (ShoalError, ValueError):
        where = "the database server"
    return where, database_url_source(explicit)


def explain(exc: BaseException, explicit_url: str | None) -> tuple[str, int] | None:
    """One actionable line and the exit code (2: fix the input, 1: could not be done) for a
    failure users meet; None for anything else (a bug: keep its traceback)."""
    where, source = _server(explicit_url)
    if isinstance(exc, ShoalError):
        return str(exc), 2
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (f"database: {exc}: check the password in {source} "
                "(on Kubernetes, in the Secret the URL comes from)"), 2
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # no such role, or pg_hba refuses
        return f"database: {exc}: check the user name in {source} and the server's pg_hba.conf", 2
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"database: {exc}: check the database name (after the last /) in {source}", 2
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError
                  | asyncpg.InvalidSchemaNameError) and "shoal" in str(exc):
        return f"database: {exc}: the Shoal schema is missing or old; run `shoal migrate` first", 2
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return f"{source}: {exc}; expected {EXPECTED}", 2
    if isinstance(exc, asyncpg.PostgresError):
        hint = getattr(exc, "hint", None)
        return f"database: {exc}" + (f" ({hint})" if hint else ""), 1
    if isinstance(exc, asyncpg.InterfaceError):
        return f"database: {exc}", 1
    if isinstance(exc, BrokenPipeError):  # `shoal jobs list | head`: the reader left
        return "output closed before the command finished", 1
    if isinstance(exc, TimeoutError):
        return (f"database: no answer from {where} within {CONNECT_TIMEOUT:.0f} s: check the host and "
                f"port in {source}, and any firewall between", 1)
    if isinstance(exc, socket.gaierror):
        return f"database: cannot resolve the host of {where} ({exc.strerror}): check the host in {source}", 1
    if isinstance(exc, ConnectionError) or (isinstance(exc, OSError) and "Connect call failed" in str(exc)):
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
        return (f"database: cannot connect to {where} ({reason}): is PostgreSQL running there? "
                f"check the host and port in {source}", 1)
    if isinstance(exc, OSError):
        return str(exc), 1
    return None


# -- flags (argparse types: a bad value is a usage error naming the flag) -----------------------
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def enqueue_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_ENQUEUE_COUNT:
        raise argparse.ArgumentTypeError(f"at most {MAX_ENQUEUE_COUNT:,} jobs per command, got {value:,}; "
                                         "run the command several times for more")
    return value


def seconds(text: str) -> float:
    """A duration >= 0; nan and inf are refused too (they would fail deep inside instead)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def seconds_or_forever(text: str) -> float:
    """Seconds, or `forever` (math.inf). Negative numbers used to mean forever by accident."""
    if text.strip().lower() in ("forever", "none"):
        return math.inf
    try:
        return seconds(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 'forever'") from None


def read_payload(payload: str | None, payload_file: str | None) -> tuple[Any, int]:
    """The payload and its size in bytes. A file or stdin (`--payload -`) carries what argv
    cannot (a few hundred KB at most on Linux)."""
    if payload is not None and payload_file is not None:
        raise ValidationError("--payload-file", "give --payload or --payload-file, not both")
    flag, text = "--payload", payload
    try:
        if payload_file is not None:
            flag = "--payload-file"
            with open(payload_file, encoding="utf-8") as f:
                text = f.read()
        elif text == "-":
            text = sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(flag, f"cannot read {payload_file or 'stdin'}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    if text is None:
        return None, 2
    try:
        return json.loads(text), len(text.encode())
    except json.JSONDecodeError as exc:
        raise ValidationError(flag, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
