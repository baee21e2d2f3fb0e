#!/bin/sh
# The two steps compose.yaml runs besides plain `farm api` / `farm coordinator`:
#
#   farm-compose init      first start (and every start after: each step is skipped once done):
#                          the database schema, signing key and index trees (`farm init`); the local
#                          admin token, $FARM_HOME/admin.token, as `farm up` makes it; and a worker
#                          token for the stack's worker, kept in FARM_WORKER_HOME/farm.toml (mode 0600).
#   farm-compose worker    the container worker: `farm worker ARGS`, after putting the uv binary it
#                          lends to verification containers on the shared FARM_HOME path.
set -eu

init() {
    : "${FARM_HOME:?}" "${FARM_WORKER_HOME:?}"
    farm init
    farm_python=$(readlink -f "$(command -v farm)" | sed 's,/bin/farm$,/bin/python,')
    "$farm_python" - <<'PY'
import os
from pathlib import Path
from farm.tokens import ensure_local_admin_token, local_admin_path
home = Path(os.environ["FARM_HOME"])
if ensure_local_admin_token(home)[1]:
    print(f"farm-compose: made the local admin token {local_admin_path(home)}")
PY
    umask 077
    mkdir -p "$FARM_WORKER_HOME"
    worker_toml="$FARM_WORKER_HOME/farm.toml"
    if ! grep -qs '^token *=' "$worker_toml"; then
        name="compose-worker-$(date +%Y%m%d%H%M%S)"
        token=$(farm token create "$name" --role worker)
        printf '# made by farm-compose init: the worker token %s (its sha256 is in the server'"'"'s farm.toml)\ntoken = "%s"\n' \
            "$name" "$token" >> "$worker_toml"
        echo "farm-compose: made the worker token $name in $worker_toml"
    fi
}

worker() {
    : "${FARM_HOME:?}"
    # Verification containers get the worker's uv by a bind mount, whose source the engine looks up
    # on the host: keep the real binary on the FARM_HOME path (the same inside and outside) and let
    # the virtual environment's uv point there.
    uv=$(readlink -f "$(dirname "$(readlink -f "$(command -v farm)")")/uv")
    tools="$FARM_HOME/.tools"
    mkdir -p "$tools"
    if [ "$uv" != "$tools/uv" ]; then
        cp "$uv" "$tools/uv.new" && mv "$tools/uv.new" "$tools/uv"
        ln -sf "$tools/uv" "$(dirname "$(readlink -f "$(command -v farm)")")/uv"
    fi
    exec farm worker "$@"
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
    init) init "$@" ;;
    worker) worker "$@" ;;
    *) echo "usage: farm-compose init | farm-compose worker [farm worker options]" >&2; exit 2 ;;
esac
