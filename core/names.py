"""Validation of names that reach SQL and Kubernetes.

SQL is always parameterised; these checks exist so that bad names fail at the edge
with a message naming the field, instead of deep inside Postgres or the API server.
"""

from __future__ import annotations

import re

from shoal.errors import ValidationError

QUEUE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")


def queue_name(name: object, field: str = "queue") -> str:
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise ValidationError(
            field,
            f"invalid queue name {name!r}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit (e.g. 'emails' or 'prod.emails')",
        )
    return name


def task_name(name: object, field: str = "task") -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError(field, "task name is empty: give the name the handler was registered with")
    if not TASK_NAME.match(name):
        raise ValidationError(
            field,
            f"invalid task name {name!r}: start with a letter or '_', then letters, digits, '_', '.', ':' or '-'",
        )
    return name
