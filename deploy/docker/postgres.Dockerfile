# A PostgreSQL for the compose demo's CAS replicas, built from the same Debian base as netshield's
# image (so it builds where only the package registries are reachable):
#
#   docker build -f deploy/docker/postgres.Dockerfile -t netshield-postgres .
#
# On its first start it makes a random password (in /run/netshield-database/password, owned by
# the CAS's uid 10001, mode 0400, on a volume only the database and the CAS replicas mount),
# initialises a cluster whose only role, `netshield`, logs in with that password (SCRAM) and owns
# the database `netshield`, then runs PostgreSQL as the unprivileged `postgres` user. In
# production use your own managed database; the CAS only needs a URL and a password file.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o postgres -g postgres -m 0700 /var/lib/netshield-postgres \
 && install -d -m 0755 /run/netshield-database
COPY deploy/docker/postgres-entrypoint.sh /usr/local/bin/netshield-postgres
RUN chmod 0755 /usr/local/bin/netshield-postgres
EXPOSE 5432
HEALTHCHECK --interval=1s --timeout=5s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1 -U netshield -d netshield"]
ENTRYPOINT ["netshield-postgres"]
