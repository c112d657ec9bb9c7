#!/usr/bin/env bash
# Install the project with its dev tools into .venv (idempotent). Used by test.sh and chaos.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
echo "==> installing shoal[dev]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import shoal, shoal.cli, kopf, kmock, pgserver, importlinter" >/dev/null
