#!/usr/bin/env bash
# Install Shoal with its embedded PostgreSQL into .venv (idempotent) and run the demo:
# a burst of jobs drained by autoscaled local workers, then scaled back to zero.
set -euo pipefail
cd "$(dirname "$0")/.."
# The repo root holds a folder named `operator` (mapped to shoal.operator): never let it shadow
# the standard library's `operator` through the current directory on sys.path.
export PYTHONSAFEPATH=1
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
echo "==> installing shoal[embedded]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[embedded]' 2>&1 | grep -v "is ignored: it is neither" || true
exec .venv/bin/shoal --log-format text --log-level warning up --demo "$@"
