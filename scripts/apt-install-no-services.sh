#!/usr/bin/env bash
# Install Debian packages without letting their maintainer scripts start any service: Debian's nginx
# would serve its default site on 0.0.0.0:80, and docker.io would start docker.service (a bridge and
# iptables rules). A policy-rc.d that refuses every service start is in place for the install only.
#   scripts/apt-install-no-services.sh PACKAGE...      (as root; prints nothing to stdout)
set -euo pipefail
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "$@" >&2 || {
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "$@" >&2; }
