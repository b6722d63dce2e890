#!/bin/sh
# The compose demo's PostgreSQL (see postgres.Dockerfile): password and cluster on first start,
# then PostgreSQL itself as the postgres user, listening for password-authenticated TCP only.
set -eu
DATA=/var/lib/netshield-postgres/data
SECRET=/run/netshield-database/password
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if [ ! -s "$SECRET" ]; then
  umask 077
  head -c 24 /dev/urandom | base64 | tr -d '\n/+=' > "$SECRET.tmp"
  echo >> "$SECRET.tmp"
  mv "$SECRET.tmp" "$SECRET"
fi
chown 10001:10001 "$SECRET" && chmod 0400 "$SECRET"   # the CAS replicas' uid reads it
if [ ! -s "$DATA/PG_VERSION" ]; then
  pw=$(mktemp) && cp "$SECRET" "$pw" && chown postgres "$pw"
  runuser -u postgres -- "$BIN/initdb" -D "$DATA" -U netshield --auth=scram-sha-256 \
    --pwfile="$pw" --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$DATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$DATA/pg_hba.conf"
  runuser -u postgres -- "$BIN/postgres" --single -D "$DATA" postgres >/dev/null <<SQL
CREATE DATABASE netshield OWNER netshield;
SQL
  echo "netshield-postgres: initialised $DATA (role and database netshield)"
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$DATA" -c listen_addresses='*' \
  -c unix_socket_directories=/tmp
