#!/usr/bin/env bash
# Idempotent setup shared by the README's commands: a virtual environment with the
# package and its extras, and (with --emulators) Azurite from npm. moto's server comes
# with the Python packages. Re-running is cheap: a stamp file skips pip when
# pyproject.toml has not changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.ambrosia-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
if [ "${1:-}" = "--emulators" ]; then
  if [ ! -x node_modules/.bin/azurite ] || [ package.json -nt node_modules/.bin/azurite ]; then
    npm install --no-audit --no-fund --silent
  fi
fi
