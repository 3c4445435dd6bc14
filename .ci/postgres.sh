#!/usr/bin/env bash
# A throwaway PostgreSQL server for the distributed-search tests (tests/test_postgres.py).
#   .ci/postgres.sh start   start one (stopping any left over) and print its URL
#   .ci/postgres.sh url     print the running server's URL
#   .ci/postgres.sh stop    stop it and delete its data directory
# The cluster lives in a temporary directory, listens on 127.0.0.1 only, and runs as a
# non-root user (PostgreSQL refuses root): the system user automl-pg when run as root.
set -euo pipefail

TMP=${TMPDIR:-/tmp}
STATE="$TMP/automl-postgres-$(id -u).state"
FIRST_PORT=54329
ROLE=automl
DATABASE=automl

die() { echo "postgres.sh: $*" >&2; exit 1; }

# The newest installed PostgreSQL's programs (Debian keeps them off PATH).
bin_dir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  [ -n "$initdb" ] || initdb=$(command -v initdb || true)
  [ -n "$initdb" ] || die "initdb not found: install PostgreSQL (apt-get install postgresql)"
  dirname "$initdb"
}

# Run a command as the server's user: automl-pg when root (created on first use), else us.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u automl-pg -- "$@"; else "$@"; fi
}

owner() {
  if [ "$(id -u)" = 0 ]; then
    id -u automl-pg >/dev/null 2>&1 ||
      useradd --system --no-create-home --shell /usr/sbin/nologin automl-pg ||
      die "cannot create the system user automl-pg"
    echo automl-pg
  else
    id -un
  fi
}

free_port() {
  local port
  for port in $(seq "$FIRST_PORT" $((FIRST_PORT + 50))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
  die "no free port in $FIRST_PORT-$((FIRST_PORT + 50)) on 127.0.0.1"
}

# One value from the state file (key=value lines; read, never sourced).
state() {
  local key value
  while IFS='=' read -r key value; do
    [ "$key" = "$1" ] && { echo "$value"; return; }
  done <"$STATE"
  die "$STATE has no $1"
}

start() {
  stop
  local bin user data port password
  bin=$(bin_dir)
  user=$(owner)
  data=$(mktemp -d "$TMP/automl-pg.XXXXXX")
  chown "$user" "$data"
  port=$(free_port)
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  printf 'data=%s\nport=%s\nurl=%s\n' "$data" "$port" \
    "postgresql://$ROLE:$password@127.0.0.1:$port/$DATABASE" >"$STATE"
  chmod 600 "$STATE"
  as_owner test -w "$data" ||
    die "user $user cannot write to $data: set TMPDIR to a directory it can reach"
  as_owner "$bin/initdb" -D "$data" -U "$user" --auth-local=peer \
    --auth-host=scram-sha-256 >"$data.initdb.log" 2>&1 ||
    { cat "$data.initdb.log" >&2; die "initdb failed"; }
  rm -f "$data.initdb.log"
  cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
fsync = off  # a throwaway test cluster: nothing to keep after a crash
EOF
  as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null ||
    { tail -n 20 "$data/server.log" >&2; die "the server did not start"; }
  # The password goes through stdin, never a command line other users could read.
  as_owner "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$data" -p "$port" -d postgres >/dev/null <<EOF
CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE $DATABASE OWNER $ROLE;
EOF
  state url
}

stop() {
  [ -f "$STATE" ] || return 0
  local data
  data=$(state data)
  case "$data" in "$TMP"/automl-pg.*) ;; *) die "$STATE names an unexpected directory: $data";; esac
  if [ -f "$data/postmaster.pid" ]; then
    as_owner "$(bin_dir)/pg_ctl" -D "$data" -m fast -w stop >/dev/null ||
      echo "postgres.sh: the server in $data did not stop cleanly" >&2
  fi
  rm -rf "$data" "$data.initdb.log" "$STATE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) [ -f "$STATE" ] || die "no server started (run: $0 start)"; state url ;;
  *) die "usage: $0 start|stop|url" ;;
esac
