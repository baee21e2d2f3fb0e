#!/usr/bin/env bash
# Debian's docker-compose (1.29), for compose.yaml and its test (tests/test_compose.py). It brings
# only the client: the engine is the farm's private one (scripts/docker-up.sh), never Debian's
# docker.service, which would create a bridge and iptables rules. Idempotent; prints nothing to stdout.
set -euo pipefail
command -v docker-compose >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-compose: docker-compose is needed for compose.yaml: install it as root" >&2
    exit 0
fi
bash "$(dirname "$0")/apt-install-no-services.sh" docker-compose
exit 0
