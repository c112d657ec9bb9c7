#!/usr/bin/env bash
# Install the project with its dev tools into .venv (idempotent), lint, type-check, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The repo root is safe on sys.path (operator/__init__.py hands `import operator` over to the
# standard library; tests/core/test_repo_root.py), but keep it off anyway: the tests import the
# installed `shoal`, never the top-level folders themselves.
export PYTHONSAFEPATH=1
bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/python scripts/typecheck.py  # mypy on the installed layout: the editable hook hides shoal.* from it
echo "==> import contracts"
.venv/bin/python scripts/lint_imports.py
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
