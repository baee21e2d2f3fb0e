#!/usr/bin/env bash
# nginx from Debian, for the TLS reverse-proxy test (docs/nginx/farm.conf). Debian's package starts
# its default site on 0.0.0.0:80 when installed: a policy-rc.d that refuses service starts keeps
# it from ever listening; the tests run their own nginx on a loopback port.
set -euo pipefail
command -v nginx >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-nginx: nginx is needed for the TLS test: install it as root" >&2
    exit 0
fi
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends nginx-light >&2 || {
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends nginx-light >&2; }
[ "$had_policy" = 0 ] && rm -f "$policy"
# Never serve the default site, even if something starts the service later.
rm -f /etc/nginx/sites-enabled/default
