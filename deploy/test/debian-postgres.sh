#!/bin/sh
# PostgreSQL from Debian's package as the official image runs it: a cluster in
# /var/lib/postgresql/data made on first start with POSTGRES_PASSWORD (scram) and POSTGRES_DB,
# listening on every address, run in the foreground as the postgres user.
set -eu
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DATA=/var/lib/postgresql/data
mkdir -p "$DATA" /run/postgresql
chown postgres:postgres "$DATA" /run/postgresql
chmod 700 "$DATA"
if [ ! -s "$DATA/PG_VERSION" ]; then
  umask 077
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
  chown postgres /tmp/pwfile
  runuser -u postgres -- "$PGBIN/initdb" -D "$DATA" -U postgres --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$DATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$DATA/postgresql.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -w -o "-c listen_addresses=''" start >/dev/null
    runuser -u postgres -- "$PGBIN/psql" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$POSTGRES_DB\""
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -w stop >/dev/null
  fi
fi
exec runuser -u postgres -- "$PGBIN/postgres" -D "$DATA"
