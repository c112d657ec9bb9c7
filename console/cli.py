"""`shoal console`: registered through the `shoal.commands` entry point (placeholder until the server lands)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    sub.add_parser("console", help="serve the web console")
