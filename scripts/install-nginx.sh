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
bash "$(dirname "$0")/apt-install-no-services.sh" nginx-light
# Never serve the default site, even if something starts the service later.
rm -f /etc/nginx/sites-enabled/default
