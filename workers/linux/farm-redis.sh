#!/bin/sh
# Entrypoint of the Redis image: the password goes into a configuration file readable by redis only,
# then redis-server runs as the redis user with the arguments given (bind address, port, AOF, --dir).
set -eu
: "${FARM_REDIS_PASSWORD:?set FARM_REDIS_PASSWORD (letters and digits: it goes into broker URLs)}"
dir=/var/lib/redis
prev=""
for arg in "$@"; do   # the data folder: --dir DIR
    [ "$prev" = "--dir" ] && dir="$arg"
    prev="$arg"
done
mkdir -p "$dir"
chown redis:redis "$dir"
chmod 0750 "$dir"
conf=/run/farm-redis.conf
umask 077
printf 'requirepass "%s"\n' "$FARM_REDIS_PASSWORD" > "$conf"
chown redis:redis "$conf"
exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$conf" "$@"
