#!/usr/bin/env bash
# Throw-away backing services for lapseguard's integration tests.
#
#   scripts/services.sh start    install what is missing, start everything, write target/services.env
#   scripts/services.sh stop     stop everything and delete the data dirs (safe to repeat)
#   scripts/services.sh status   print up/down per service (exit 0 only when all are up)
#   scripts/services.sh rabbitmqctl|rabbitmq-diagnostics|rabbitmq-plugins ARGS...
#                                run a RabbitMQ CLI against the test node (same env/cookie)
#
# Services (all on 127.0.0.1, ports overridable via the env vars in brackets):
#   PostgreSQL 15   55432 [LAPSEGUARD_PG_PORT]
#   RabbitMQ 3.10   AMQP 55672 [LAPSEGUARD_AMQP_PORT], management HTTP 55673
#                   [LAPSEGUARD_RABBITMQ_MANAGEMENT_PORT], MQTT 51883 [LAPSEGUARD_MQTT_PORT],
#                   Erlang distribution 55679 [LAPSEGUARD_RABBITMQ_DIST_PORT],
#                   epmd 54369 [LAPSEGUARD_EPMD_PORT], CLI distribution 55680-55689
#   MinIO           S3 API 59000 [LAPSEGUARD_S3_PORT], console 59001 [LAPSEGUARD_S3_CONSOLE_PORT]
#
# Everything lives under target/services/ (data, logs, pid files) so it can never
# collide with a system-wide install and `stop` can wipe it without side effects.
#
# Requirements: Debian 12 (bookworm) and Go >= 1.24 on PATH (or /usr/local/go/bin).
# PostgreSQL and RabbitMQ come from apt; MinIO is built from the Go module proxy
# (the environments we run in can reach package registries but not GitHub
# releases or container registries, so there is no prebuilt binary to fetch).
# The cold MinIO build takes ~4-6 minutes on 2 cores (plus ~1.2 GB of module
# downloads into GOMODCACHE); the binary is cached in
# ${LAPSEGUARD_TOOLS_DIR:-~/.cache/lapseguard/tools} (cache that dir in CI).
set -euo pipefail

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SERVICES_DIR="$REPO_ROOT/target/services"
ENV_FILE="$REPO_ROOT/target/services.env"

PG_PORT=${LAPSEGUARD_PG_PORT:-55432}
AMQP_PORT=${LAPSEGUARD_AMQP_PORT:-55672}
RABBITMQ_MANAGEMENT_PORT=${LAPSEGUARD_RABBITMQ_MANAGEMENT_PORT:-55673}
MQTT_PORT=${LAPSEGUARD_MQTT_PORT:-51883}
RABBITMQ_DIST_PORT=${LAPSEGUARD_RABBITMQ_DIST_PORT:-55679}
EPMD_PORT=${LAPSEGUARD_EPMD_PORT:-54369}
S3_PORT=${LAPSEGUARD_S3_PORT:-59000}
S3_CONSOLE_PORT=${LAPSEGUARD_S3_CONSOLE_PORT:-59001}

PG_BIN=/usr/lib/postgresql/15/bin
RABBITMQ_BIN=/usr/lib/rabbitmq/bin

# MinIO publishes no semver tags on the module proxy, only pseudo-versions.
# This one (2026-02-12) is what `go list -m github.com/minio/minio@latest`
# resolved to; it builds with Go 1.26.
MINIO_VERSION=${LAPSEGUARD_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
TOOLS_DIR=${LAPSEGUARD_TOOLS_DIR:-$HOME/.cache/lapseguard/tools}
MINIO_BIN="$TOOLS_DIR/minio-$MINIO_VERSION/minio"

DB_USER=lapseguard
DB_PASSWORD=lapseguard
DB_NAME=lapseguard
RABBITMQ_USER=lapseguard
RABBITMQ_PASSWORD=lapseguard
S3_ACCESS_KEY=lapseguard
S3_SECRET_KEY=lapseguard-secret
S3_REGION=us-east-1

# How long to wait for a freshly started server before giving up (seconds).
# A first RabbitMQ boot on a loaded 2-core CI box can take ~30s.
STARTUP_TIMEOUT=${LAPSEGUARD_SERVICES_TIMEOUT:-120}

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

# Run a command with root privileges (only needed for apt).
as_root() {
  if is_root; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

port_open() {
  # bash's /dev/tcp avoids depending on nc/ss; `timeout` guards against a
  # firewall silently dropping the SYN.
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

# A zombie counts as dead: in containers whose PID 1 does not reap orphans,
# `kill -0` would otherwise report a stopped daemon as alive forever.
pid_alive() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null &&
    [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

read_pid() { [[ -f $1 ]] && tr -dc '0-9' <"$1" || true; }

# Stop the process in pidfile $2 (TERM, then KILL after a grace period) and
# remove the pidfile. Only our own pid files are used, so we never touch
# unrelated processes (e.g. a system-wide rabbitmq or postgres).
kill_pidfile() {
  local name=$1 pidfile=$2 grace=${3:-30} pid i
  pid=$(read_pid "$pidfile")
  if pid_alive "$pid"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      log "$name did not exit after ${grace}s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

show_log_tail() {
  if [[ -f $1 ]]; then
    printf '[services] ---- last 40 lines of %s ----\n' "$1" >&2
    tail -n 40 "$1" >&2
    printf '[services] ---- end of log ----\n' >&2
  fi
}

# wait_until NAME LOGFILE PID CMD...: poll CMD until it succeeds. Fails fast
# (with the log tail) if PID dies, and after STARTUP_TIMEOUT seconds.
wait_until() {
  local name=$1 logfile=$2 pid=$3
  shift 3
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! pid_alive "$pid"; then
      show_log_tail "$logfile"
      die "$name exited during startup (see $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$logfile"
      die "$name not ready after ${STARTUP_TIMEOUT}s (see $logfile)"
    fi
    sleep 0.5
  done
}

# Refuse to start on a port someone else already owns: the tests would
# silently talk to the wrong server otherwise.
require_free_ports() {
  local name=$1 port
  shift
  for port in "$@"; do
    if port_open "$port"; then
      die "cannot start $name: 127.0.0.1:$port is already in use by another process"
    fi
  done
}

# ---------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------
POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_RC_D_BACKUP=

restore_policy_rc_d() {
  if [[ -n $POLICY_RC_D_BACKUP ]]; then
    as_root mv -f "$POLICY_RC_D_BACKUP" "$POLICY_RC_D"
  else
    as_root rm -f "$POLICY_RC_D"
  fi
}

# Only called right after *we* installed the packages: on a machine where
# someone runs a system-wide rabbitmq/postgres on purpose we leave it alone.
stop_stray_system_daemons() {
  # policy-rc.d should have prevented these, but systemd-only hooks or a
  # pre-existing permissive policy could still have started them.
  if command -v pgrep >/dev/null 2>&1 && pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
    log "stopping system rabbitmq-server started by the package install"
    as_root service rabbitmq-server stop >/dev/null 2>&1 || as_root pkill -u rabbitmq beam.smp || true
  fi
  if command -v pg_lsclusters >/dev/null 2>&1; then
    local ver cluster _port status _rest
    while read -r ver cluster _port status _rest; do
      if [[ $status == online* ]]; then
        log "stopping system postgres cluster $ver/$cluster started by the package install"
        as_root pg_ctlcluster "$ver" "$cluster" stop || true
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
  # A default-port epmd with no registered nodes is a leftover of the install.
  if port_open 4369 && command -v epmd >/dev/null 2>&1 &&
     [[ -z $(ERL_EPMD_PORT=4369 epmd -names 2>/dev/null | grep '^name ' || true) ]]; then
    log "stopping stray epmd on the default port 4369"
    ERL_EPMD_PORT=4369 epmd -kill >/dev/null 2>&1 || true
  fi
}

ensure_packages() {
  local missing=()
  # Check for the binaries we actually use rather than asking dpkg: it is
  # faster and also accepts e.g. postgresql-15 installed without the metapackage.
  [[ -x $PG_BIN/pg_ctl && -x $PG_BIN/initdb ]] || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  [[ -x $RABBITMQ_BIN/rabbitmq-server ]] || missing+=(rabbitmq-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
  # The timelapse renderer encodes with ffmpeg; its tests read videos back with ffprobe.
  command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
  if ((${#missing[@]} == 0)); then
    return 0
  fi

  log "installing Debian packages: ${missing[*]}"
  # Keep postinst scripts from starting system-wide daemons (they would grab
  # the default ports and run forever); 101 = "action forbidden by policy".
  if [[ -e $POLICY_RC_D ]]; then
    POLICY_RC_D_BACKUP=$(mktemp /tmp/policy-rc.d.lapseguard.XXXXXX)
    as_root cp -p "$POLICY_RC_D" "$POLICY_RC_D_BACKUP"
  fi
  trap restore_policy_rc_d EXIT
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC_D" >/dev/null
  as_root chmod 755 "$POLICY_RC_D"

  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y
    -o DPkg::Lock::Timeout=300
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # A stale or unreachable third-party source must not block the install:
  # the Debian archive is what we need, so only warn on update errors.
  as_root "${apt[@]}" update >&2 || log "warning: apt-get update reported errors, trying to install anyway"
  as_root "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2

  restore_policy_rc_d
  trap - EXIT
  stop_stray_system_daemons

  [[ -x $PG_BIN/pg_ctl ]] || die "postgresql installed but $PG_BIN/pg_ctl is missing (expected PostgreSQL 15 / Debian 12)"
  [[ -x $RABBITMQ_BIN/rabbitmq-server ]] || die "rabbitmq-server installed but $RABBITMQ_BIN/rabbitmq-server is missing"
}

find_go() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
  else return 1
  fi
}

ensure_minio() {
  if [[ -x $MINIO_BIN ]]; then
    return 0
  fi
  local go
  go=$(find_go) || die "Go is required to build MinIO ($MINIO_VERSION) but was not found (Debian's golang-go is too old; install Go >= 1.24)"
  log "building MinIO $MINIO_VERSION with $("$go" version | cut -d' ' -f3) (cold build: ~4-6 min on 2 cores)"
  local started=$SECONDS
  local out_dir tmp_bin
  out_dir=$(dirname "$MINIO_BIN")
  mkdir -p "$TOOLS_DIR"
  # Install into a temp dir and rename, so an interrupted build never leaves
  # a half-written binary that later runs would mistake for a finished one.
  tmp_bin=$(mktemp -d "$TOOLS_DIR/.minio-build.XXXXXX")
  # CGO_ENABLED=0: static binary like upstream releases, no C toolchain needed.
  # GOTOOLCHAIN=local: never try to download another Go toolchain.
  # GOFLAGS is set wholesale so a caller's -mod=vendor/readonly cannot leak in.
  # Module checksums are still verified: sum.golang.org is not reachable from
  # our CI, but the go command transparently uses proxy.golang.org's sumdb mirror.
  if ! GOBIN="$tmp_bin" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" \
       "$go" install -trimpath -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION" >&2; then
    rm -rf "$tmp_bin"
    die "building MinIO $MINIO_VERSION failed (see the go output above)"
  fi
  mkdir -p "$out_dir"
  mv -f "$tmp_bin/minio" "$MINIO_BIN"
  rm -rf "$tmp_bin"
  log "built MinIO in $((SECONDS - started))s -> $MINIO_BIN"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
PG_LINK="$SERVICES_DIR/postgres"

# postgres refuses to run as root, so as root we run it as the `postgres` user.
as_pg() {
  # cd / because initdb/pg_ctl abort if they cannot read the current directory
  # (e.g. a checkout under /root is not traversable by `postgres`).
  if is_root; then (cd / && runuser -u postgres -- "$@")
  else (cd / && "$@")
  fi
}

# The real data dir. Normally target/services/postgres/data; when the
# checkout is not traversable by the postgres user (a clone under /root),
# target/services/postgres is a symlink to a private dir under /tmp.
pg_data_dir() {
  if [[ -e $PG_LINK ]]; then
    echo "$(readlink -f "$PG_LINK")/data"
  else
    echo "$PG_LINK/data"
  fi
}

pg_ready() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres >/dev/null 2>&1
}

pg_running() {
  local pgdata pid
  pgdata=$(pg_data_dir)
  [[ -f $pgdata/postmaster.pid ]] || return 1
  pid=$(head -n1 "$pgdata/postmaster.pid" 2>/dev/null | tr -dc '0-9')
  pid_alive "$pid" && pg_ready
}

pg_psql() {
  PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$@"
}

# Creates the (possibly relocated) parent of the data dir, writable by the
# user postgres runs as.
prepare_pg_dir() {
  rm -rf "$PG_LINK"
  mkdir -p "$PG_LINK"
  is_root || return 0
  chown postgres:postgres "$PG_LINK"
  if ! runuser -u postgres -- test -w "$PG_LINK/." 2>/dev/null; then
    rmdir "$PG_LINK"
    local private
    private=$(mktemp -d /tmp/lapseguard-postgres.XXXXXX)
    chown postgres:postgres "$private"
    ln -s "$private" "$PG_LINK"
    log "postgres user cannot access $REPO_ROOT; using $private for its data"
  fi
}

start_postgres() {
  local logfile="$SERVICES_DIR/postgres.log"
  if pg_running; then
    log "postgres already running on 127.0.0.1:$PG_PORT"
    return 0
  fi
  # Anything left here belongs to a dead instance; data is throw-away.
  stop_postgres
  require_free_ports postgres "$PG_PORT"

  log "initialising postgres data dir"
  prepare_pg_dir
  local pgdata pwfile
  pgdata=$(pg_data_dir)
  pwfile=$(mktemp /tmp/lapseguard-pgpw.XXXXXX)
  printf '%s\n' "$DB_PASSWORD" >"$pwfile"
  is_root && chown postgres "$pwfile"
  # The bootstrap superuser *is* lapseguard, so there is no separate
  # `postgres` role to manage and no unix socket is ever needed.
  if ! as_pg "$PG_BIN/initdb" -D "$pgdata" -U "$DB_USER" --pwfile="$pwfile" \
       --auth-host=scram-sha-256 --auth-local=scram-sha-256 \
       -E UTF8 --locale=C --no-sync >"$logfile" 2>&1; then
    rm -f "$pwfile"
    show_log_tail "$logfile"
    die "initdb failed"
  fi
  rm -f "$pwfile"
  # Test-only tuning: durability is pointless for a throw-away cluster, and
  # tests running in parallel each hold a connection pool.
  cat >>"$pgdata/postgresql.conf" <<EOF

# --- lapseguard test settings (scripts/services.sh) ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
EOF

  log "starting postgres on 127.0.0.1:$PG_PORT"
  # No -l: the server inherits this (root-opened) log fd, which works even
  # when the postgres user may not write into the checkout. 9>&-: daemons
  # must not inherit the lock fd (see take_lock).
  if ! as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -w -t "$STARTUP_TIMEOUT" start >>"$logfile" 2>&1 </dev/null 9>&-; then
    show_log_tail "$logfile"
    die "postgres failed to start (see $logfile)"
  fi
  wait_until postgres "$logfile" "" pg_ready
  pg_psql -d postgres -c "CREATE DATABASE $DB_NAME" >/dev/null
  log "postgres ready"
}

stop_postgres() {
  local pgdata
  pgdata=$(pg_data_dir)
  if [[ -f $pgdata/postmaster.pid ]]; then
    log "stopping postgres"
    as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w -t 60 stop >/dev/null 2>&1 ||
      as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  # Remove the relocated data dir too, not just the symlink.
  if [[ -L $PG_LINK ]]; then
    local target
    target=$(readlink -f "$PG_LINK")
    [[ $target == /tmp/lapseguard-postgres.* ]] && rm -rf "$target"
  fi
  rm -rf "$PG_LINK"
}

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------
RABBITMQ_DIR="$SERVICES_DIR/rabbitmq"
RABBITMQ_NODENAME=${LAPSEGUARD_RABBITMQ_NODENAME:-lapseguard-test@localhost}
RABBITMQ_PIDFILE="$SERVICES_DIR/rabbitmq.pid"     # the rabbitmq-server shell wrapper
RABBITMQ_BEAM_PIDFILE="$RABBITMQ_DIR/beam.pid"    # the Erlang VM, written by rabbit
EPMD_PIDFILE="$SERVICES_DIR/epmd.pid"

# Everything the server *and* the CLI tools need to find this node and
# nothing of a system-wide install (/etc/rabbitmq, /var/lib/rabbitmq).
# We call /usr/lib/rabbitmq/bin directly: the /usr/sbin wrappers would `su`
# to the rabbitmq user and reset HOME (i.e. the Erlang cookie).
rabbitmq_env() {
  export HOME="$RABBITMQ_DIR/home"                 # .erlang.cookie lives here
  export RABBITMQ_NODENAME
  export RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_CONF_ENV_FILE="$RABBITMQ_DIR/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$RABBITMQ_DIR/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$RABBITMQ_DIR/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBITMQ_DIR/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$RABBITMQ_DIR/mnesia"
  export RABBITMQ_LOG_BASE="$RABBITMQ_DIR/log"
  export RABBITMQ_PID_FILE="$RABBITMQ_BEAM_PIDFILE"
  export RABBITMQ_LOGS=-                           # stdout -> target/services/rabbitmq.log
  export RABBITMQ_DIST_PORT
  export ERL_EPMD_PORT=$EPMD_PORT
  export ERL_EPMD_ADDRESS=127.0.0.1
  # The default CLI range (dist port + 10000) would exceed 65535 for 55679.
  export RABBITMQ_CTL_DIST_PORT_MIN=$((RABBITMQ_DIST_PORT + 1))
  export RABBITMQ_CTL_DIST_PORT_MAX=$((RABBITMQ_DIST_PORT + 10))
  # Keep Erlang distribution (which grants remote code execution to anyone
  # with the cookie) on loopback.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbitmq_ready() {
  port_open "$AMQP_PORT" && port_open "$MQTT_PORT" &&
    curl -fsS -m 5 -u "$RABBITMQ_USER:$RABBITMQ_PASSWORD" \
      "http://127.0.0.1:$RABBITMQ_MANAGEMENT_PORT/api/whoami" >/dev/null 2>&1
}

rabbitmq_running() {
  pid_alive "$(read_pid "$RABBITMQ_BEAM_PIDFILE")" && rabbitmq_ready
}

start_rabbitmq() {
  local logfile="$SERVICES_DIR/rabbitmq.log"
  if rabbitmq_running; then
    log "rabbitmq already running on 127.0.0.1:$AMQP_PORT"
    return 0
  fi
  stop_rabbitmq
  require_free_ports rabbitmq "$EPMD_PORT" "$RABBITMQ_DIST_PORT" "$AMQP_PORT" \
    "$RABBITMQ_MANAGEMENT_PORT" "$MQTT_PORT"

  mkdir -p "$RABBITMQ_DIR/home" "$RABBITMQ_DIR/mnesia" "$RABBITMQ_DIR/log"
  # Pre-create the cookie: if the server and a CLI call raced to create it
  # they could end up with different ones.
  (umask 077 && printf '%s' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" \
    >"$RABBITMQ_DIR/home/.erlang.cookie")
  chmod 400 "$RABBITMQ_DIR/home/.erlang.cookie"
  : >"$RABBITMQ_DIR/rabbitmq-env.conf"
  echo '[rabbitmq_management,rabbitmq_mqtt].' >"$RABBITMQ_DIR/enabled_plugins"
  # default_user replaces `guest` on first boot, so no rabbitmqctl round
  # trips (each costs seconds of Erlang VM startup) are needed to provision.
  cat >"$RABBITMQ_DIR/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
default_vhost = /
default_user = $RABBITMQ_USER
default_pass = $RABBITMQ_PASSWORD
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MANAGEMENT_PORT
mqtt.listeners.tcp.default = 127.0.0.1:$MQTT_PORT
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
EOF

  (
    rabbitmq_env
    # Our own epmd, on our port and loopback, so we know its pid and it never
    # serves (or is shared with) a system-wide Erlang node.
    setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 \
      >"$SERVICES_DIR/epmd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$EPMD_PIDFILE"
  )
  wait_until epmd "$SERVICES_DIR/epmd.log" "$(read_pid "$EPMD_PIDFILE")" port_open "$EPMD_PORT"

  log "starting rabbitmq node $RABBITMQ_NODENAME (AMQP 127.0.0.1:$AMQP_PORT, HTTP $RABBITMQ_MANAGEMENT_PORT, MQTT $MQTT_PORT)"
  (
    rabbitmq_env
    cd "$RABBITMQ_DIR"
    setsid "$RABBITMQ_BIN/rabbitmq-server" >"$logfile" 2>&1 </dev/null 9>&- &
    echo $! >"$RABBITMQ_PIDFILE"
  )
  wait_until rabbitmq "$logfile" "$(read_pid "$RABBITMQ_PIDFILE")" rabbitmq_ready
  log "rabbitmq ready"
}

stop_rabbitmq() {
  # TERM to the VM is a clean shutdown in 3.10; the wrapper shell then exits.
  kill_pidfile "rabbitmq" "$RABBITMQ_BEAM_PIDFILE" 60
  kill_pidfile "rabbitmq-server wrapper" "$RABBITMQ_PIDFILE" 10
  kill_pidfile epmd "$EPMD_PIDFILE" 10
  rm -rf "$RABBITMQ_DIR"
}

# ---------------------------------------------------------------------------
# MinIO
# ---------------------------------------------------------------------------
MINIO_DIR="$SERVICES_DIR/minio"
MINIO_PIDFILE="$SERVICES_DIR/minio.pid"

minio_ready() {
  curl -fsS -m 5 "http://127.0.0.1:$S3_PORT/minio/health/ready" >/dev/null 2>&1
}

minio_running() {
  pid_alive "$(read_pid "$MINIO_PIDFILE")" && minio_ready
}

start_minio() {
  local logfile="$SERVICES_DIR/minio.log"
  if minio_running; then
    log "minio already running on 127.0.0.1:$S3_PORT"
    return 0
  fi
  stop_minio
  require_free_ports minio "$S3_PORT" "$S3_CONSOLE_PORT"
  mkdir -p "$MINIO_DIR/data"
  log "starting minio on 127.0.0.1:$S3_PORT (console $S3_CONSOLE_PORT)"
  # MINIO_CI_CD: same relaxed single-drive checks locally as under CI=true.
  # HOME: minio keeps client certs/config there; keep it throw-away too.
  (
    export HOME="$MINIO_DIR" MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY"
    export MINIO_SITE_REGION="$S3_REGION" MINIO_UPDATE=off MINIO_CI_CD=1
    setsid "$MINIO_BIN" server \
      --address "127.0.0.1:$S3_PORT" --console-address "127.0.0.1:$S3_CONSOLE_PORT" \
      "$MINIO_DIR/data" >"$logfile" 2>&1 </dev/null 9>&- &
    echo $! >"$MINIO_PIDFILE"
  )
  wait_until minio "$logfile" "$(read_pid "$MINIO_PIDFILE")" minio_ready
  log "minio ready"
}

stop_minio() {
  kill_pidfile minio "$MINIO_PIDFILE" 30
  rm -rf "$MINIO_DIR"
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
write_env_file() {
  local tmp="$ENV_FILE.tmp.$$"
  cat >"$tmp" <<EOF
LAPSEGUARD_DATABASE_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME
LAPSEGUARD_AMQP_URL=amqp://$RABBITMQ_USER:$RABBITMQ_PASSWORD@127.0.0.1:$AMQP_PORT/%2f
LAPSEGUARD_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
LAPSEGUARD_MQTT_USERNAME=$RABBITMQ_USER
LAPSEGUARD_MQTT_PASSWORD=$RABBITMQ_PASSWORD
LAPSEGUARD_RABBITMQ_MANAGEMENT_URL=http://$RABBITMQ_USER:$RABBITMQ_PASSWORD@127.0.0.1:$RABBITMQ_MANAGEMENT_PORT
LAPSEGUARD_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
LAPSEGUARD_S3_REGION=$S3_REGION
LAPSEGUARD_S3_ACCESS_KEY_ID=$S3_ACCESS_KEY
LAPSEGUARD_S3_SECRET_ACCESS_KEY=$S3_SECRET_KEY
LAPSEGUARD_ADMIN_TOKEN=test-admin-token
LAPSEGUARD_LISTEN=127.0.0.1:8080
EOF
  mv -f "$tmp" "$ENV_FILE"
}

# Serialise concurrent invocations (e.g. two test jobs on one machine).
# Every daemon we spawn closes fd 9 (`9>&-`); otherwise it would hold the
# lock for its whole lifetime and the next invocation would block.
take_lock() {
  mkdir -p "$SERVICES_DIR"
  exec 9>"$REPO_ROOT/target/.services.lock"
  if ! flock -w 900 9; then
    die "timed out waiting for another scripts/services.sh to finish"
  fi
}

cmd_start() {
  local started=$SECONDS
  take_lock
  ensure_packages
  ensure_minio
  start_postgres
  start_rabbitmq
  start_minio
  write_env_file
  log "all services up in $((SECONDS - started))s; env: $ENV_FILE"
  log "use: set -a; . target/services.env; set +a"
}

cmd_stop() {
  take_lock
  stop_minio
  stop_rabbitmq
  stop_postgres
  rm -f "$SERVICES_DIR"/*.pid
  log "all services stopped; data removed (logs kept in $SERVICES_DIR)"
}

cmd_status() {
  local all_up=0
  report() {
    if "$2"; then printf '%-9s up    %s\n' "$1" "$3"
    else printf '%-9s down  %s\n' "$1" "$3"; all_up=1
    fi
  }
  report postgres pg_running "127.0.0.1:$PG_PORT"
  report rabbitmq rabbitmq_running "amqp 127.0.0.1:$AMQP_PORT, http $RABBITMQ_MANAGEMENT_PORT, mqtt $MQTT_PORT"
  report minio minio_running "127.0.0.1:$S3_PORT"
  return "$all_up"
}

cmd_rabbitmq_cli() {
  local tool=$1
  shift
  rabbitmq_env
  exec "$RABBITMQ_BIN/$tool" "$@"
}

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  rabbitmqctl | rabbitmq-diagnostics | rabbitmq-plugins | rabbitmq-queues)
    cmd_rabbitmq_cli "$@" ;;
  *) usage ;;
esac
