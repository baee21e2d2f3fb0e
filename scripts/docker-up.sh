#!/usr/bin/env bash
# Start the farm's private Docker engine (idempotent) and print how to reach it.
#
#   eval "$(scripts/docker-up.sh)"     # sets DOCKER_HOST for this shell
#
# The engine never touches the host's networking: no bridge, no iptables rules, containers get
# `--network host` or `--network none` only. Its data, exec root, socket, log and pid file all live
# below $FARM_DOCKER_DIR (default ~/.cache/wheel-farm/docker). Everything but the final
# `export DOCKER_HOST=...` line goes to stderr.
set -euo pipefail

DIR="${FARM_DOCKER_DIR:-$HOME/.cache/wheel-farm/docker}"
SOCK="$DIR/docker.sock"
HOST="unix://$SOCK"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
TIMEOUT="${FARM_DOCKER_TIMEOUT:-60}"

say() { echo "docker-up: $*" >&2; }

answers() { docker -H "$HOST" info >/dev/null 2>&1; }

install_engine() {
    if command -v dockerd >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1 \
        && command -v runc >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
        && command -v docker >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        say "dockerd/debootstrap missing and not root: install docker.io and debootstrap first"
        exit 1
    fi
    say "installing docker.io and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends docker.io debootstrap >&2
}

start_engine() {
    local driver="$1"
    mkdir -p "$DIR/data" "$DIR/exec"
    say "starting dockerd (storage driver $driver), log in $LOG"
    # setsid: the engine outlives this script and the caller's process group.
    setsid dockerd \
        --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
        --storage-driver="$driver" \
        --data-root="$DIR/data" --exec-root="$DIR/exec" \
        --pidfile="$PIDFILE" --host="$HOST" \
        </dev/null >>"$LOG" 2>&1 &
    local pid=$!
    local waited=0
    while [ "$waited" -lt "$TIMEOUT" ]; do
        if answers; then
            say "dockerd pid $pid answers on $HOST"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited (storage driver $driver); last log lines:"
            tail -n 15 "$LOG" >&2 || true
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "dockerd did not answer within ${TIMEOUT} s; stopping pid $pid"
    kill "$pid" 2>/dev/null || true
    return 1
}

mkdir -p "$DIR"
chmod 700 "$DIR"
if answers; then
    say "already running on $HOST"
else
    install_engine
    # A stale pid file or socket from an engine that died would stop dockerd from starting.
    if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        rm -f "$PIDFILE"
    fi
    if [ -f "$PIDFILE" ]; then
        say "dockerd pid $(cat "$PIDFILE") exists but does not answer yet; waiting"
        for _ in $(seq "$TIMEOUT"); do answers && break; sleep 1; done
        answers || { say "dockerd pid $(cat "$PIDFILE") does not answer; run scripts/docker-down.sh"; exit 1; }
    else
        rm -f "$SOCK"
        driver="${FARM_DOCKER_STORAGE_DRIVER:-overlay2}"
        if ! start_engine "$driver"; then
            if [ "$driver" = overlay2 ]; then
                rm -f "$SOCK" "$PIDFILE"
                start_engine vfs || exit 1
            else
                exit 1
            fi
        fi
    fi
fi
echo "export DOCKER_HOST=$HOST"
