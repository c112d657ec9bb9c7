"""Rewrite one generated section of docs/benchmarks.md, between two HTML-comment markers.

Shared by bench/run.py and bench/scale.py: each owns its markers, and the text outside them is
left as written by hand.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_between(begin: str, end: str, body: str, heading: str, before: str | None = None,
                  path: Path = DOCS) -> None:
    """Put `body` between `begin` and `end` in `path`. Markers missing: add `heading` with them,
    before the line `before` when the page has it, else at the end."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin not in text or end not in text:
        section = f"{heading}\n\n{begin}\n{end}\n"
        if before is not None and f"\n{before}" in text:
            text = text.replace(f"\n{before}", f"\n{section}\n{before}", 1)
        else:
            text = text.rstrip() + f"\n\n{section}"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
