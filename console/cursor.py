"""Page cursors: the ordering key of the last row a page read, opaque to clients.

Keyset pagination (never OFFSET): the next page starts strictly after this key, so it costs one
index descent however deep one pages, and rows inserted meanwhile never shift a page.
A cursor names the ordering it belongs to, so one reused with other filters is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from shoal.errors import ValidationError

# The orderings (console/queries.py picks one from the filters) and their key's columns.
KEYS = {"pending": ("priority", "run_at", "id"), "finished": ("finished_at", "id"),
        "running": ("id",), "id": ("id",)}
_TIMES = {"run_at", "finished_at"}


def encode(kind: str, row: Any) -> str:
    """The cursor after `row` in the ordering `kind`."""
    values = [row[c].isoformat() if c in _TIMES else row[c] for c in KEYS[kind]]
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(kind: str, text: str) -> list[Any]:
    """The key values of a cursor of ordering `kind`; ValidationError('cursor') otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("cursor", "not a cursor this console handed out") from None
    if not isinstance(data, list) or not data or data[0] != kind or len(data) != len(KEYS[kind]) + 1:
        raise ValidationError("cursor", "belongs to other filters: start again from the first page")
    values: list[Any] = []
    try:
        for column, value in zip(KEYS[kind], data[1:], strict=True):
            if column in _TIMES:
                values.append(datetime.fromisoformat(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                values.append(value)
            else:
                raise ValueError(column)
    except (TypeError, ValueError):
        raise ValidationError("cursor", "not a cursor this console handed out") from None
    return values
