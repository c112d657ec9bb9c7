"""The Django tests' own session: run by tests/producers/test_django.py and test_examples.py in a
pytest subprocess with DJANGO_SETTINGS_MODULE=mysite.settings (examples/django_app) and DATABASE_URL
a migrated database, so that pytest-django stays inert in every other test run.

Files here are named check_*.py: the outer run does not collect them (its python_files is test_*.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command

# Collected by hand without the runner (no settings): nothing here can run.
collect_ignore_glob = [] if os.environ.get("DJANGO_SETTINGS_MODULE") else ["check_*.py"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker: Any) -> None:
    """The database the runner made (Shoal's schema in it) instead of a test database: only the
    example app's tables are added, with Django's migrate."""
    with django_db_blocker.unblock():
        call_command("migrate", verbosity=0)


@pytest.fixture
def observer() -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own, which sees only what has been committed."""
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as c:
        c.execute("DELETE FROM shoal.jobs")
        yield c
