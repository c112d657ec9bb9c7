"""The operator's runtime settings (from `shoal operator`'s flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    resync_seconds: float = 10.0  # Queue: drift check, counts, status
    cron_interval: float = 1.0  # CronJob: how often to look for a due tick
    cron_resync_seconds: float = 30.0  # CronJob: re-resolve its Queue and refresh status at least this often
