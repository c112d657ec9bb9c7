"""Shoal's version, read from the installed distribution's metadata (pyproject.toml is its only
source: the chart's appVersion and the image tags are checked against it by tests/delivery)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def shoal_version() -> str:
    try:
        return version("shoal")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


__version__ = shoal_version()
