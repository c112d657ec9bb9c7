"""Optional extras: `pip install shoal` is the producer client and the worker; the operator and the
console bring heavier stacks (kopf and the kubernetes client; aiohttp) as extras, and so do the
synchronous producers (psycopg) and their framework integrations (Django, SQLAlchemy). A command or
module whose extra is missing says what to install instead of failing with an ImportError deep inside."""

from __future__ import annotations

import importlib.util

from shoal.errors import ConfigError

# Each extra of pyproject.toml a command or module needs, and the modules it brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "operator": ("kopf", "kubernetes"),
    "console": ("aiohttp",),
    "sync": ("psycopg",),
    "django": ("psycopg", "django"),
    "sqlalchemy": ("sqlalchemy",),
}


class MissingExtraError(ConfigError, ImportError):
    """A module of Shoal imported without its extra: an ImportError (what `import` raises) that
    names the install."""


def _missing(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str, command: str) -> None:
    """Raise ConfigError (exit 2) naming the install command if `extra`'s modules are absent."""
    missing = _missing(extra)
    if missing:
        raise ConfigError(f"`{command}` needs {', '.join(missing)}, which `pip install shoal` leaves out: "
                          f"pip install 'shoal[{extra}]' (the shoal operator image has it)")


def require_module_extra(extra: str, module: str) -> None:
    """At the top of a module that needs `extra`: raise MissingExtraError naming the install if
    its modules are absent, rather than a bare ModuleNotFoundError from a line inside."""
    missing = _missing(extra)
    if missing:
        raise MissingExtraError(f"{module} needs {', '.join(missing)}, which `pip install shoal` leaves out: "
                                f"pip install 'shoal[{extra}]'")
