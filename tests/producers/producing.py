"""What the producer tests share besides fixtures (conftest.py): names and small reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

QUEUE = "q"
ROOT = Path(__file__).resolve().parents[2]
DJANGO_EXAMPLE = ROOT / "examples" / "django_app"


def count(conn: psycopg.Connection[Any], where: str = "true") -> int:
    row = conn.execute(f"SELECT count(*) FROM shoal.jobs WHERE {where}").fetchone()  # noqa: S608 - tests' constants
    assert row is not None
    return int(row[0])


def run_django_suite(database_url: str, server_url: str, *files: str) -> None:
    """Run tests/producers/django_suite/<files> in a pytest of their own, with pytest-django set up
    for the example project: this process never configures Django (pytest-django stays inert here)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings", "DATABASE_URL": database_url,
           "SHOAL_TEST_DATABASE_URL": server_url, "PYTHONSAFEPATH": "1",
           "PYTHONPATH": os.pathsep.join([str(DJANGO_EXAMPLE), str(ROOT / "tests")])}
    suite = Path(__file__).resolve().parent / "django_suite"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_files=check_*.py",
               "-W", "ignore::pytest.PytestAssertRewriteWarning", *(str(suite / f) for f in files)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"the Django tests failed:\n{result.stdout}\n{result.stderr}"
