#!/usr/bin/env bash
# Install the project with its dev tools into .venv (idempotent), lint, type-check, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The repo root holds a folder named `operator` (mapped to shoal.operator): never let it shadow
# the standard library's `operator` through the current directory on sys.path.
export PYTHONSAFEPATH=1
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
echo "==> installing shoal[dev]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import shoal, kopf, kmock, pgserver" >/dev/null
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy core worker operator scaler
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
