#!/usr/bin/env bash
# Ingest benchmark (not a test): uploads/s and p50/p99 latency of 2 MB JPEGs at
# concurrency 16 through the backend vs raw MinIO PUTs of the same bytes, in the same
# run, printed as ratios. Target: backend >= 0.7x the raw PUT rate, p99 <= 2x raw p99.
#
# Usage: bench/ingest.sh [ingest_bench options...]
#   e.g. bench/ingest.sh --requests 800 --concurrency 32 --size-mb 5
#   Options: cargo run -p backend --example ingest_bench -- --help
#
# What it does: starts the services (scripts/services.sh start; stopped again at the
# end only when this script started them, unless LAPSEGUARD_BENCH_KEEP_SERVICES=1),
# builds the release backend and the load generator, creates the bench buckets, runs
# `backend migrate`, starts `backend serve` on a free loopback port (JSON logs at level
# warn in target/bench-backend.log), waits for /readyz, runs
# backend/examples/ingest_bench.rs against it and stops the backend again (also on
# failure or Ctrl-C).
#
# The backend runs with its own buckets (lapseguard-bench-input/-output) and AMQP prefix
# (lapseguard-bench), so its jobs never reach a worker of the default topology; the
# uploaded objects are deleted after the run (pass --keep to keep them; an interrupted run
# leaves them until `scripts/services.sh stop`).
#
# Reading the results: on a small box the client, the backend, MinIO, PostgreSQL and
# RabbitMQ share the same CPUs, so the rate ratio is mostly raw CPU cost per PUT over
# backend CPU cost per upload (see the per-process CPU table the benchmark prints).
# Runs of a few hundred requests vary by about +-0.1 in the rate ratio; use more
# requests and rounds (e.g. --requests 1600 --rounds 8) before drawing conclusions, and
# mind that once several GB are written the disk, not the CPU, becomes the limit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

log() { printf '[ingest.sh] %s\n' "$*" >&2; }
die() { printf '[ingest.sh] ERROR: %s\n' "$*" >&2; exit 1; }

BACKEND_PID=""
BENCH_PID=""
STARTED_SERVICES=0
BACKEND_LOG="$ROOT/target/bench-backend.log"

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  if [ -n "$BACKEND_PID" ] && kill -0 "$BACKEND_PID" 2>/dev/null; then
    log "stopping backend (pid $BACKEND_PID)"
    kill -TERM "$BACKEND_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$BACKEND_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$BACKEND_PID" 2>/dev/null; then
      log "backend did not stop within 10s; killing it"
      kill -KILL "$BACKEND_PID" 2>/dev/null || true
    fi
    wait "$BACKEND_PID" 2>/dev/null || true
  fi
  if [ "$STARTED_SERVICES" = 1 ] && [ "${LAPSEGUARD_BENCH_KEEP_SERVICES:-0}" != 1 ]; then
    log "stopping the services this script started"
    scripts/services.sh stop >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback TCP port (the kernel picks it; tiny race until the backend binds).
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

if scripts/services.sh status >/dev/null 2>&1; then
  log "services already running"
else
  log "starting services"
  STARTED_SERVICES=1
  scripts/services.sh start
fi

log "building release backend and load generator"
cargo build --release --locked -p backend --bin backend --example ingest_bench

set -a
# shellcheck disable=SC1091
. target/services.env
set +a

PORT="$(free_port)"
export LAPSEGUARD_LISTEN="127.0.0.1:$PORT"
export LAPSEGUARD_BENCH_BACKEND="http://127.0.0.1:$PORT"
export LAPSEGUARD_INPUT_BUCKET="${LAPSEGUARD_BENCH_INPUT_BUCKET:-lapseguard-bench-input}"
export LAPSEGUARD_OUTPUT_BUCKET="${LAPSEGUARD_BENCH_OUTPUT_BUCKET:-lapseguard-bench-output}"
export LAPSEGUARD_AMQP_PREFIX="${LAPSEGUARD_BENCH_AMQP_PREFIX:-lapseguard-bench}"
export LAPSEGUARD_LOG_FORMAT=json
export LAPSEGUARD_LOG_FILTER="${LAPSEGUARD_BENCH_LOG_FILTER:-warn}"
unset RUST_LOG # would override the filter above

BIN="$ROOT/target/release/backend"
BENCH="$ROOT/target/release/examples/ingest_bench"

log "creating buckets"
"$BENCH" --create-buckets "$@"

log "migrating the database"
"$BIN" migrate

log "starting backend on $LAPSEGUARD_LISTEN (log: $BACKEND_LOG)"
"$BIN" serve >"$BACKEND_LOG" 2>&1 &
BACKEND_PID=$!

ready=0
for _ in $(seq 1 300); do
  if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
    tail -n 20 "$BACKEND_LOG" >&2 || true
    die "backend exited during start-up"
  fi
  if curl -fsS -o /dev/null --max-time 2 "$LAPSEGUARD_BENCH_BACKEND/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
[ "$ready" = 1 ] || {
  curl -sS --max-time 2 "$LAPSEGUARD_BENCH_BACKEND/readyz" >&2 || true
  die "backend not ready after 30s"
}

log "running the benchmark"
# In the background so that a signal to this script is handled at once (bash runs traps
# only between foreground commands) and the cleanup can stop it.
"$BENCH" "$@" &
BENCH_PID=$!
set +e
wait "$BENCH_PID"
rc=$?
set -e
BENCH_PID=""
if grep -q '"level":"ERROR"' "$BACKEND_LOG" 2>/dev/null; then
  log "backend logged errors, see $BACKEND_LOG"
fi
exit "$rc"
