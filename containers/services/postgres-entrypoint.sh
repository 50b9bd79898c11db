#!/bin/bash
# Entry point of the locally built PostgreSQL image: the behaviour of the official image's
# docker-entrypoint.sh that lapseguard relies on.
#   * arguments starting with "-" are passed to postgres;
#   * on first start (no $PGDATA/PG_VERSION): initdb with POSTGRES_USER / POSTGRES_PASSWORD
#     (scram-sha-256 for network clients), create POSTGRES_DB, run /docker-entrypoint-initdb.d;
#   * then exec postgres in the foreground (PID 1, SIGINT = fast shutdown).
set -Eeuo pipefail
log() { printf '%s [entrypoint] %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
[ "$1" = postgres ] || exec "$@"

: "${PGDATA:?}"
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    log "error: the database is uninitialized and POSTGRES_PASSWORD is not set"
    exit 1
  fi
  log "initializing $PGDATA"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >&2
  rm -f "$pwfile"
  printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  # a private server (unix socket only) for the setup
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" start >&2
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
      --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >&2
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) log "running $f"; . "$f" ;;
      *.sql) log "running $f"; psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$f" >&2 ;;
      *) ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >&2
  log "initialized"
fi
exec "$@"
