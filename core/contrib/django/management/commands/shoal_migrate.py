"""`manage.py shoal_migrate [--database ALIAS] [--target N]`: create or upgrade Shoal's schema.

Applied through Django's own connection for that alias (shoal.sync.migrate, psycopg 3): the same
credentials, host and options as the application, and no asyncpg DSN rebuilt from settings. The
same files, lock and bookkeeping as `shoal migrate`, so either may run, in any order.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shoal import sync
from shoal.contrib.django import connection, database_alias


class Command(BaseCommand):
    help = "Apply Shoal's pending migrations (its `shoal` schema) to the database in settings.SHOAL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", help='the database alias (default: SHOAL["DATABASE"] or "default")')
        parser.add_argument("--target", type=int, help="apply migrations up to this version only")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = database_alias(options.get("database"))
        applied = sync.migrate(connection(alias), options.get("target"))
        if applied:
            self.stdout.write(f"Applied Shoal migrations {', '.join(map(str, applied))} to {alias!r}.")
        else:
            self.stdout.write(f"Shoal's schema on {alias!r} is up to date.")
