#!/usr/bin/env bash
# Stop the private Docker engine that scripts/docker-up.sh started (by its pid file only).
set -euo pipefail

DIR="${FARM_DOCKER_DIR:-$HOME/.cache/wheel-farm/docker}"
PIDFILE="$DIR/dockerd.pid"

if [ ! -f "$PIDFILE" ]; then
    echo "docker-down: no pid file at $PIDFILE: nothing to stop" >&2
    exit 0
fi
pid="$(cat "$PIDFILE")"
if ! kill -0 "$pid" 2>/dev/null; then
    echo "docker-down: dockerd pid $pid is not running; removing the stale pid file" >&2
    rm -f "$PIDFILE"
    exit 0
fi
echo "docker-down: stopping dockerd pid $pid" >&2
kill -TERM "$pid"
for _ in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "docker-down: stopped" >&2; exit 0; }
    sleep 1
done
echo "docker-down: dockerd pid $pid still running after 30 s; sending KILL" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$PIDFILE"
