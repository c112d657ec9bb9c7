"""Errors a user can act on: each names the field at fault and the fix."""

from __future__ import annotations


class ShoalError(Exception):
    """Base class for every error Shoal raises on purpose."""


class ConfigError(ShoalError):
    """Configuration is missing or malformed (database URL, CLI flags)."""


class ValidationError(ShoalError, ValueError):
    """An argument is invalid; `field` names it so callers can point at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownQueueError(ShoalError, LookupError):
    """Enqueueing into a queue nobody declared: peers strand such jobs silently, we refuse."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            f"queue: unknown queue {queue!r}; declare it first with `shoal queue create {queue}` "
            "or a Queue resource"
        )
        self.queue = queue


class JobNotFoundError(ShoalError, LookupError):
    """A job id that never existed."""


class PermanentError(ShoalError):
    """Raise from a task handler to fail the job at once, without retries."""
