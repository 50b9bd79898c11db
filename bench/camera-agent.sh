#!/usr/bin/env bash
# camera-agent footprint and throughput (not a test): release binary size, RSS when idle
# and while draining a backlog, and upload throughput against a release backend on
# loopback (PostgreSQL, RabbitMQ, MinIO of scripts/services.sh).
#
# Usage: bench/camera-agent.sh [--frames N] [--concurrency C] [--rate BYTES_PER_SEC]
#   --frames       backlog size (default 1000)
#   --concurrency  upload_concurrency of the agent (default 1, the agent's default)
#   --rate         upload_max_bytes_per_sec (default 0: no cap)
#
# The backlog is made by `camera-agent simulate` from testdata/*.{jpg,png} (frames of
# 88 kB, 140 kB and 792 kB, every one with distinct bytes), written into the capture folder
# while the agent is stopped; then the agent starts and drains it. RSS is sampled from
# /proc every 100 ms; throughput is measured between the first and the last "frame
# uploaded" log line (so the start-up scan's stable_secs wait does not count).
#
# The backend runs with its own buckets (lapseguard-agentbench-input/-output), AMQP prefix
# (lapseguard-agentbench) and a project per run; its jobs reach no worker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

FRAMES=1000
CONCURRENCY=1
RATE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --frames) FRAMES="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[camera-agent.sh] %s\n' "$*" >&2; }
die() { printf '[camera-agent.sh] ERROR: %s\n' "$*" >&2; exit 1; }

BACKEND_PID=""
AGENT_PID=""
WORK="$ROOT/target/agent-bench"
cleanup() {
  local rc=$?
  for pid in "$AGENT_PID" "$BACKEND_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

scripts/services.sh status >/dev/null 2>&1 || scripts/services.sh start
log "building release backend and camera-agent"
cargo build --release --locked -p backend --bin backend
cargo build --release --locked -p camera-agent
AGENT="$ROOT/target/release/camera-agent"
BIN="$ROOT/target/release/backend"

set -a
# shellcheck disable=SC1091
. target/services.env
set +a
PORT="$(free_port)"
export LAPSEGUARD_LISTEN="127.0.0.1:$PORT"
export LAPSEGUARD_INPUT_BUCKET=lapseguard-agentbench-input
export LAPSEGUARD_OUTPUT_BUCKET=lapseguard-agentbench-output
export LAPSEGUARD_AMQP_PREFIX=lapseguard-agentbench
export LAPSEGUARD_LOG_FORMAT=json
export LAPSEGUARD_LOG_FILTER=warn
unset RUST_LOG
"$BIN" migrate
"$BIN" init-buckets
"$BIN" serve >"$ROOT/target/agent-bench-backend.log" 2>&1 &
BACKEND_PID=$!
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
  kill -0 "$BACKEND_PID" 2>/dev/null || die "backend exited (target/agent-bench-backend.log)"
  sleep 0.1
done
API="http://127.0.0.1:$PORT/v1"
SLUG="agentbench-$(date +%s)"
curl -fsS -o /dev/null -H "Authorization: Bearer $LAPSEGUARD_ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d "{\"slug\":\"$SLUG\",\"name\":\"agent bench\"}" "$API/projects"
TOKEN=$(curl -fsS -H "Authorization: Bearer $LAPSEGUARD_ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"bench"}' "$API/projects/$SLUG/cameras" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# Only the agent's own settings from here on.
for v in $(env | sed -n 's/^\(LAPSEGUARD_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done
export LAPSEGUARD_LOG_FORMAT=json LAPSEGUARD_STABLE_SECS=1 LAPSEGUARD_UPLOAD_CONCURRENCY="$CONCURRENCY" \
  LAPSEGUARD_UPLOAD_MAX_BYTES_PER_SEC="$RATE" LAPSEGUARD_TOKEN="$TOKEN"

rm -rf "$WORK"; mkdir -p "$WORK/capture"
watch_agent() {
  "$AGENT" watch --backend "http://127.0.0.1:$PORT" --capture-dir "$WORK/capture" --spool-dir "$WORK/spool" \
    >"$WORK/$1.log" 2>&1 &
  AGENT_PID=$!
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
stop_agent() { kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""; }

log "idle: agent on an empty capture folder for 10 s"
watch_agent idle
sleep 10
IDLE_RSS=$(rss_kib "$AGENT_PID"); IDLE_HWM=$(hwm_kib "$AGENT_PID")
stop_agent

log "writing a backlog of $FRAMES frames (camera-agent simulate)"
"$AGENT" simulate --source testdata --capture-dir "$WORK/capture" --interval 1ms --count "$FRAMES" >"$WORK/simulate.log" 2>&1
BACKLOG_BYTES=$(du -sb "$WORK/capture" | cut -f1)

log "draining: agent started with $FRAMES frames waiting"
START=$(date +%s.%N)
watch_agent drain
PEAK=0
while :; do
  r=$(rss_kib "$AGENT_PID"); [ "${r:-0}" -gt "$PEAK" ] && PEAK=$r
  left=$(( $(find "$WORK/capture" -maxdepth 1 -type f ! -name '.*' | wc -l) + $(find "$WORK/spool/pending" -type f 2>/dev/null | wc -l) ))
  [ "$left" = 0 ] && [ -d "$WORK/spool/pending" ] && break
  kill -0 "$AGENT_PID" 2>/dev/null || die "agent exited ($WORK/drain.log)"
  sleep 0.1
done
END=$(date +%s.%N)
DRAIN_HWM=$(hwm_kib "$AGENT_PID")
stop_agent

python3 - "$WORK/drain.log" "$FRAMES" "$BACKLOG_BYTES" "$START" "$END" <<'PY'
import json, sys
from datetime import datetime
log, frames, total, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
ts, statuses = [], {}
for line in open(log):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "frame uploaded":
        ts.append(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp())
        statuses[e["status"]] = statuses.get(e["status"], 0) + 1
span = max(ts) - min(ts) if len(ts) > 1 else float("nan")
print(f"uploaded: {len(ts)} of {frames} frames (answers {statuses}), {total/1e6:.1f} MB")
print(f"wall time from agent start to empty spool: {end-start:.1f} s")
print(f"upload throughput (first to last upload): {len(ts)/span:.1f} frames/s, {total/span/1e6:.1f} MB/s over {span:.1f} s")
PY
printf 'binary: %s bytes (%s)\n' "$(stat -c %s "$AGENT")" "$AGENT"
printf 'RSS idle after 10 s: %s KiB (peak %s KiB)\n' "$IDLE_RSS" "$IDLE_HWM"
printf 'RSS while draining: peak sampled %s KiB, VmHWM %s KiB\n' "$PEAK" "$DRAIN_HWM"
