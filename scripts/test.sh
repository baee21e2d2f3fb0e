#!/usr/bin/env bash
# Set up and run the whole test suite: the private Docker engine and images for the container tests
# are started and built here too (root file systems cached under ~/.cache/wheel-farm).
#   scripts/test.sh [pytest args]      e.g. scripts/test.sh -m "not slow" for the fast tests only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
eval "$(scripts/docker-up.sh)"
export DOCKER_HOST
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
