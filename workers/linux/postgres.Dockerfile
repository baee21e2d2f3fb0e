# PostgreSQL 15 from Debian on the farm's own bookworm image, for compose.yaml (no registry needed).
#
#   docker build --network host -f workers/linux/postgres.Dockerfile -t wheel-farm/postgres workers/linux
#
# farm-postgres.sh makes the cluster on first start (superuser `farm`, database `farm`, password
# from FARM_POSTGRES_PASSWORD, scram-sha-256 for every connection) and listens on 127.0.0.1 only.
ARG BASE_IMAGE=wheel-farm/debian-bookworm:latest
FROM ${BASE_IMAGE}

# Debian's package would make a cluster of its own in /var/lib/postgresql: the entrypoint makes one in PGDATA.
RUN mkdir -p /etc/postgresql-common \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

COPY farm-postgres.sh /usr/local/bin/farm-postgres
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
STOPSIGNAL SIGINT
CMD ["farm-postgres"]
