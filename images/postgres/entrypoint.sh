#!/bin/sh
# First start: a cluster in $PGDATA with $POSTGRES_USER (password $POSTGRES_PASSWORD) owning
# $POSTGRES_DB, reachable over the network with that password only. Later starts: the server.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "gpuhub-postgres: POSTGRES_PASSWORD is empty (GPUHUB_POSTGRES_PASSWORD in the settings file); refusing to create a database anyone could open" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode: no server listens while the database is made.
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "gpuhub-postgres: created the cluster in $PGDATA (database $POSTGRES_DB, owner $POSTGRES_USER)"
fi
exec postgres -D "$PGDATA"
