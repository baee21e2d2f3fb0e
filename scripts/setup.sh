#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtual environment in .venv with the farm and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# Package code runs only inside bubblewrap (farm/worker/sandbox/linux.py), dropped to an unprivileged
# uid with setpriv and limited with prlimit (util-linux).
if [ "$(uname -s)" = Linux ] && ! { command -v bwrap && command -v setpriv && command -v prlimit; } >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing bubblewrap" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends bubblewrap util-linux >&2
    else
        echo "setup: bubblewrap (bwrap), setpriv and prlimit are needed for the sandbox: install them as root" >&2
    fi
fi
# nginx for the TLS reverse-proxy test (docs/nginx/farm.conf); never started as a service.
bash scripts/install-nginx.sh
bash scripts/install-compose.sh  # Debian's docker-compose for compose.yaml and tests/test_compose.py
bash scripts/install-qemu.sh  # qemu-user-static and binfmt_misc: linux-aarch64 under emulation (docs/operating.md)
# The dashboard's browser tests (tests/test_web.py) drive Debian's chromium with Playwright;
# Playwright's own browser download is not used.
if [ "$(uname -s)" = Linux ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends chromium >&2
    else
        echo "setup: /usr/bin/chromium is needed for the dashboard's browser tests: install chromium as root" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "setup: $(.venv/bin/farm --help >/dev/null && echo 'farm installed in .venv')" >&2
