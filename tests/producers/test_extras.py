"""The producers' extras: `import shoal` brings none of psycopg, Django or SQLAlchemy, and a module
whose extra is missing says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shoal.extras import MissingExtraError


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_base_package_imports_no_optional_driver_or_framework() -> None:
    result = run("""
        import sys
        import shoal, shoal.client, shoal.producer, shoal.validation, shoal.copy_rows, shoal.waiting
        print(sorted(m for m in ("psycopg", "django", "sqlalchemy") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "hidden", "extra"), [
    ("shoal.sync", "psycopg", "sync"),
    ("shoal.contrib.django", "django", "django"),
    ("shoal.contrib.sqlalchemy", "sqlalchemy", "sqlalchemy"),
])
def test_a_missing_extra_names_the_install(module: str, hidden: str, extra: str) -> None:
    result = run(f"""
        import sys
        sys.modules[{hidden!r}] = None  # as if not installed
        try:
            import {module}
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(MissingExtraError.__name__)
    assert f"pip install 'shoal[{extra}]'" in result.stdout and hidden in result.stdout
