"""What `pip install shoal[extras]` brings, read from the installed metadata (no index needed):
the e2e suite links these distributions into its image venvs, and bench/image_size.py weighs them."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from packaging.requirements import Requirement


def runtime_closure(name: str = "shoal", extras: tuple[str, ...] = ()) -> list[md.Distribution]:
    """The distributions ``pip install <name>[extras]`` would bring (not `name` itself)."""
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(req, extras) for req in md.distribution(name).requires or []]
    while todo:
        text, wanted = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*wanted, "")):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist
        todo += [(r, tuple(req.extras)) for r in dist.requires or []]
    return list(seen.values())


def installed_bytes(dist: md.Distribution) -> int:
    """The size on disk of a distribution's installed files (its RECORD), bytecode included."""
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total
