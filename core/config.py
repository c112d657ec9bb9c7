"""Where the database is: flags first, then the environment."""

from __future__ import annotations

import os

from shoal.errors import ConfigError

ENV_URL = "SHOAL_DATABASE_URL"


def database_url(explicit: str | None = None, *, required: bool = True) -> str | None:
    url = explicit or os.environ.get(ENV_URL) or os.environ.get("DATABASE_URL")
    if not url and required:
        raise ConfigError(
            f"no database: pass --database-url or set {ENV_URL}=postgresql://user:pass@host:5432/db"
        )
    return url
