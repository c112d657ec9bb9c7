#!/usr/bin/env bash
# The chaos suite (docs/chaos.md): real `shoal worker` processes and a real PostgreSQL broken on
# purpose (kill -9, restarts, SIGSTOP, SIGTERM, poison jobs), then every job checked. Exit 0 when
# every promise held. Arguments go to bench/chaos.py (--quick, --only a,f, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
bash scripts/setup.sh
echo "==> chaos suite"
exec .venv/bin/python bench/chaos.py "$@"
