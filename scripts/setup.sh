#!/usr/bin/env bash
# Install the project with its dev tools into .venv (idempotent). Used by test.sh and chaos.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
PY=${PYTHON:-python3}
# Debian packages the tests use for real: Prometheus and promtool (the alert rules and every dashboard
# query run on a real server) and Chromium (the console's browser test). Installed once, when missing.
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
echo "==> installing shoal[dev]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import shoal, shoal.cli, kopf, kmock, pgserver, importlinter" >/dev/null
