#!/usr/bin/env bash
# Install the project with its dev tools into .venv (idempotent), lint, type-check, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The repo root holds a folder named `operator` (mapped to shoal.operator): never let it shadow
# the standard library's `operator` through the current directory on sys.path.
export PYTHONSAFEPATH=1
bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy core worker operator scaler
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
