#!/usr/bin/env bash
# The main job on the embedded default: set up, start the embedded farm, turn the real pyyaml sdist
# (fetched from the upstream index, sha256 checked) into a repaired, tested wheel on the farm's own
# index, then pip-install it from that index into a fresh environment and call its C extension.
#
#   scripts/demo.sh [NAME==VERSION]      (default pyyaml==6.0.2)
set -euo pipefail
cd "$(dirname "$0")/.."
REQ="${1:-pyyaml==6.0.2}"
scripts/setup.sh
export FARM_HOME="${FARM_HOME:-$PWD/.farm/demo}"
PORT="${FARM_PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
mkdir -p "$FARM_HOME"
.venv/bin/farm up --port "$PORT" > "$FARM_HOME/up.log" 2>&1 &
UP=$!
trap 'kill "$UP" 2>/dev/null; wait "$UP" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    grep -q "farm up:" "$FARM_HOME/up.log" 2>/dev/null && break
    kill -0 "$UP" 2>/dev/null || { cat "$FARM_HOME/up.log" >&2; exit 1; }
    sleep 0.2
done
cat "$FARM_HOME/up.log"
.venv/bin/farm submit "$REQ" --wait
.venv/bin/farm status --limit 5
# The API trusts no client without a token, loopback included; the CLI on this host sends the admin
# token `farm up` made ($FARM_HOME/admin.token, mode 0600).
.venv/bin/python -c 'import httpx, sys; sys.exit(httpx.post(sys.argv[1] + "/api/releases/yank", json={"pin": sys.argv[2]}).status_code != 401)' \
    "http://127.0.0.1:$PORT" "$REQ"
.venv/bin/farm --server "http://127.0.0.1:$PORT" status --limit 1 > /dev/null
NAME="${REQ%%[=<>!~ ]*}"
VENV="$(mktemp -d)/venv"
python3 -m venv "$VENV"
# Only the farm's index: the host's pip configuration (extra indexes, find-links) is switched off.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$VENV/bin/pip" install --quiet --index-url "http://127.0.0.1:$PORT/simple/" "$REQ"
"$VENV/bin/pip" list 2>/dev/null | grep -i "^${NAME} " || true
if [ "$(echo "$NAME" | tr A-Z a-z)" = pyyaml ]; then
    (cd /tmp && "$VENV/bin/python" -c "import yaml; assert yaml.__with_libyaml__; print('pyyaml from the farm, libyaml C extension:', yaml.load('farm: [1, 2]', Loader=yaml.CSafeLoader))")
fi
echo "demo: $REQ was built, repaired, verified and installed from http://127.0.0.1:$PORT/simple/ (state in $FARM_HOME)"
