"""Optional extras: `pip install shoal` is the producer client and the worker; the operator and the
console bring heavier stacks (kopf and the kubernetes client; aiohttp) as extras. A command whose
extra is missing says what to install instead of failing with an ImportError deep inside."""

from __future__ import annotations

import importlib.util

from shoal.errors import ConfigError

# Each extra of pyproject.toml a command needs, and the modules it brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "operator": ("kopf", "kubernetes"),
    "console": ("aiohttp",),
}


def require_extra(extra: str, command: str) -> None:
    """Raise ConfigError (exit 2) naming the install command if `extra`'s modules are absent."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"`{command}` needs {', '.join(missing)}, which `pip install shoal` leaves out: "
                          f"pip install 'shoal[{extra}]' (the shoal operator image has it)")
