#!/bin/sh
# Entrypoint of the PostgreSQL image: on first start a cluster in PGDATA (superuser and database
# `farm`, password FARM_POSTGRES_PASSWORD, scram-sha-256 everywhere); then the server as the
# postgres user, on 127.0.0.1 only, port FARM_POSTGRES_PORT.
set -eu
: "${PGDATA:?set PGDATA to the cluster folder}"
: "${FARM_POSTGRES_PASSWORD:?set FARM_POSTGRES_PASSWORD}"
port="${FARM_POSTGRES_PORT:-5432}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$FARM_POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --pgdata="$PGDATA" --username=farm --pwfile="$pwfile" --auth=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >&2
    rm -f "$pwfile"
    echo "CREATE DATABASE farm OWNER farm;" | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
    echo "farm-postgres: made the cluster in $PGDATA (database farm, user farm)" >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -p "$port" -c unix_socket_directories=/tmp
