# Redis 7 from Debian on the farm's own bookworm image, for compose.yaml (no registry needed).
#
#   docker build --network host -f workers/linux/redis.Dockerfile -t wheel-farm/redis workers/linux
#
# farm-redis.sh puts FARM_REDIS_PASSWORD into a configuration file (never on the command line,
# which every user of the host can read) and runs redis-server as the redis user with the given
# arguments (compose.yaml: bind address, port, AOF persistence, data folder).
ARG BASE_IMAGE=wheel-farm/debian-bookworm:latest
FROM ${BASE_IMAGE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

COPY farm-redis.sh /usr/local/bin/farm-redis
ENTRYPOINT ["farm-redis"]
CMD ["--bind", "127.0.0.1", "--port", "6379", "--appendonly", "yes", "--dir", "/var/lib/redis"]
