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
# The package pulls in docker.io, whose maintainer scripts would start docker.service (bridge,
# iptables): a policy-rc.d that refuses service starts keeps it from ever running.
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends docker-compose >&2 || {
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends docker-compose >&2; }
[ "$had_policy" = 0 ] && rm -f "$policy"
exit 0
