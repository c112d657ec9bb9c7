"""Validation of names that reach SQL and Kubernetes.

SQL is always parameterised; these checks exist so that bad names fail at the edge
with a message naming the field, instead of deep inside Postgres or the API server.
The database applies the same rules to jobs enqueued from SQL (sql/005_validation.sql
repeats the patterns and hints below; tests/core/test_validation.py holds the two together).
"""

from __future__ import annotations

import re

from shoal.errors import ValidationError

# Matched whole (fullmatch: Python's `$` would also match before a final newline, PostgreSQL's not).
# QUEUE_NAME is also shoal.queues' CHECK and the Queue CRD's pattern. A task's length is checked
# apart: PostgreSQL's regex engine takes ~50 times longer to match a bounded repeat like {0,199}.
QUEUE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
TASK_NAME_MAX_LENGTH = 200

QUEUE_HINT = ("use 1-128 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter "
              "or digit (e.g. 'emails' or 'prod.emails')")
TASK_HINT = "start with a letter or '_', then up to 199 letters, digits, '_', '.', ':' or '-'"
TASK_EMPTY_HINT = "give the name the handler was registered with"


def quote(value: object) -> str:
    """A value as PostgreSQL's quote_literal (format's %L) writes it, so that an error reads the
    same whichever side raised it; non-strings as repr."""
    if not isinstance(value, str):
        return repr(value)
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def queue_name(name: object, field: str = "queue") -> str:
    if isinstance(name, str) and QUEUE_NAME.fullmatch(name):
        return name
    if name is None:
        raise ValidationError(field, f"no queue given: {QUEUE_HINT}")
    raise ValidationError(field, f"invalid queue name {quote(name)}: {QUEUE_HINT}")


def task_name(name: object, field: str = "task") -> str:
    if isinstance(name, str) and len(name) <= TASK_NAME_MAX_LENGTH and TASK_NAME.fullmatch(name):
        return name
    if name is None:
        raise ValidationError(field, f"no task given: {TASK_EMPTY_HINT}")
    if name == "":
        raise ValidationError(field, f"task name is empty: {TASK_EMPTY_HINT}")
    raise ValidationError(field, f"invalid task name {quote(name)}: {TASK_HINT}")
