"""The app config: `INSTALLED_APPS = [..., "shoal.contrib.django"]` brings the `shoal_migrate`
command and a system check of the SHOAL setting."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class ShoalConfig(AppConfig):
    name = "shoal.contrib.django"
    label = "shoal"
    verbose_name = "Shoal job queue"

    def ready(self) -> None:
        checks.register(check_settings)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """SHOAL["DATABASE"] names a PostgreSQL database: caught at `manage.py check`, not at the first job."""
    alias = getattr(settings, "SHOAL", {}).get("DATABASE", "default")
    database = settings.DATABASES.get(alias)
    if database is None:
        return [checks.Error(f'SHOAL["DATABASE"] is {alias!r}, which is not in settings.DATABASES',
                             hint="set SHOAL = {'DATABASE': '<alias>'} to a database of DATABASES", id="shoal.E001")]
    if "postgresql" not in database.get("ENGINE", ""):
        return [checks.Error(f"Shoal needs PostgreSQL; database {alias!r} uses {database.get('ENGINE')}",
                             hint="use django.db.backends.postgresql with psycopg 3", id="shoal.E002")]
    return []
