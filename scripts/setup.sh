#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtual environment in .venv with the farm and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "setup: $(.venv/bin/farm --help >/dev/null && echo 'farm installed in .venv')" >&2
