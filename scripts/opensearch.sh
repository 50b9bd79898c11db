#!/usr/bin/env bash
# A real, throw-away OpenSearch 2.19 node on loopback for the logging tests.
#
#   scripts/opensearch.sh start    fetch + build on first use, start, wait for yellow/green,
#                                  write target/opensearch.env (LAPSEGUARD_OPENSEARCH_URL=...)
#   scripts/opensearch.sh stop     stop it and delete its data (safe to repeat)
#   scripts/opensearch.sh status   "up URL" / "down" (exit 0 only when up)
#
# No OpenSearch distribution can be downloaded here (only package registries are
# reachable), but the server and its modules are on Maven Central. This fetches
# org.opensearch:opensearch 2.19.6 with the plugins transport-netty4 (HTTP),
# lang-painless and analysis-common (tests/logging/node/pom.xml) with `mvn`, compiles
# tests/logging/node/TestNode.java (a node with those plugins on the classpath, as
# OpenSearch's own MockNode does) and runs it. It is the real server -- the same
# mapping, indexing and search code as the distribution -- minus every plugin not
# listed, notably Index State Management and security (plain HTTP, no users).
# 2.19.x is the newest line that runs on Java 17.
#
# Settings (environment):
#   LAPSEGUARD_OPENSEARCH_PORT            HTTP port on 127.0.0.1 (default 59200)
#   LAPSEGUARD_OPENSEARCH_TRANSPORT_PORT  transport port on 127.0.0.1 (default HTTP port + 100)
#   LAPSEGUARD_OPENSEARCH_HEAP            JVM heap, at most 1g (default 512m)
#   LAPSEGUARD_OPENSEARCH_TIMEOUT         seconds to wait for the node (default 180)
#   LAPSEGUARD_CACHE_DIR                  jar cache (default ~/.cache/lapseguard; cache it in CI)
# Needs: java >= 17 (JAVA_HOME or PATH), mvn (first run only), curl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VERSION=2.19.6
PORT=${LAPSEGUARD_OPENSEARCH_PORT:-59200}
TPORT=${LAPSEGUARD_OPENSEARCH_TRANSPORT_PORT:-$((PORT + 100))}
HEAP=${LAPSEGUARD_OPENSEARCH_HEAP:-512m}
TIMEOUT=${LAPSEGUARD_OPENSEARCH_TIMEOUT:-180}
CACHE=${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}/opensearch-$VERSION
NODE_SRC="$ROOT/tests/logging/node"
STATE="$ROOT/target/opensearch"
ENV_FILE="$ROOT/target/opensearch.env"
PID_FILE="$STATE/pid"
URL="http://127.0.0.1:$PORT"

log() { printf '[opensearch] %s\n' "$*" >&2; }
die() { printf '[opensearch] ERROR: %s\n' "$*" >&2; exit 1; }

JAVA=java
[ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && JAVA="$JAVA_HOME/bin/java"
JAVAC=javac
[ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/javac" ] && JAVAC="$JAVA_HOME/bin/javac"

heap_ok() { # at most 1 GiB: keep the machine usable
  local h=${HEAP,,}
  case "$h" in
    *g) [ "${h%g}" -le 1 ] ;;
    *m) [ "${h%m}" -le 1024 ] ;;
    *) return 1 ;;
  esac
}

running_pid() { # prints the pid of our node if it is alive
  [ -f "$PID_FILE" ] || return 1
  local pid; pid=$(cat "$PID_FILE")
  kill -0 "$pid" 2>/dev/null || return 1
  # the pid must still be our java process (not a recycled pid)
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "TestNode $STATE/home" || return 1
  echo "$pid"
}

health() { curl -fsS --max-time 5 "$URL/_cluster/health" 2>/dev/null; }

fetch() {
  local stamp; stamp=$(cat "$NODE_SRC/pom.xml" | sha256sum | cut -c1-16)
  if [ -f "$CACHE/lib/.stamp" ] && [ "$(cat "$CACHE/lib/.stamp")" = "$stamp" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (Debian: apt-get install maven); needed once to fetch the jars"
  log "fetching OpenSearch $VERSION jars from Maven Central into $CACHE (once)"
  local t0=$SECONDS
  rm -rf "$CACHE/lib"
  mkdir -p "$CACHE"
  if ! mvn -q -B -Dstyle.color=never -f "$NODE_SRC/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
      dependency:copy-dependencies -DoutputDirectory="$CACHE/lib" -Dmdep.includeScope=runtime \
      > "$CACHE/mvn.log" 2>&1; then
    tail -30 "$CACHE/mvn.log" >&2
    die "mvn dependency:copy-dependencies failed (log: $CACHE/mvn.log)"
  fi
  echo "$stamp" > "$CACHE/lib/.stamp"
  log "fetched $(ls "$CACHE/lib" | wc -l) jars in $((SECONDS - t0))s"
}

build() {
  local stamp; stamp=$(cat "$NODE_SRC/TestNode.java" "$CACHE/lib/.stamp" | sha256sum | cut -c1-16)
  if [ -f "$CACHE/classes/.stamp" ] && [ "$(cat "$CACHE/classes/.stamp")" = "$stamp" ]; then
    return 0
  fi
  command -v "$JAVAC" >/dev/null || die "javac not found (a JDK >= 17 is needed)"
  rm -rf "$CACHE/classes"; mkdir -p "$CACHE/classes"
  "$JAVAC" -nowarn -d "$CACHE/classes" -cp "$CACHE/lib/*" "$NODE_SRC/TestNode.java" >&2 \
    || die "compiling TestNode.java failed"
  echo "$stamp" > "$CACHE/classes/.stamp"
}

start() {
  if pid=$(running_pid); then
    log "already running (pid $pid) at $URL"
    write_env
    return 0
  fi
  heap_ok || die "LAPSEGUARD_OPENSEARCH_HEAP=$HEAP: at most 1g"
  command -v "$JAVA" >/dev/null || die "java not found (OpenJDK >= 17)"
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
  [ "${major:-0}" -ge 17 ] || die "java $major found, OpenSearch $VERSION needs >= 17 (set JAVA_HOME)"
  if curl -s --max-time 2 -o /dev/null "$URL/"; then
    die "port $PORT is in use by something else (set LAPSEGUARD_OPENSEARCH_PORT)"
  fi
  fetch
  build
  rm -rf "$STATE"; mkdir -p "$STATE/home" "$STATE/tmp"
  log "starting OpenSearch $VERSION on $URL (heap $HEAP)"
  local t0=$SECONDS
  # Its own session (setsid) so that stop can end the JVM and nothing else.
  setsid "$JAVA" -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.io.tmpdir="$STATE/tmp" \
      -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Dlog4j2.formatMsgNoLookups=true \
      -Dopensearch.networkaddress.cache.ttl=60 \
      -cp "$CACHE/lib/*:$CACHE/classes" TestNode "$STATE/home" "$PORT" "$TPORT" \
      > "$STATE/node.log" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  local status=""
  while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
    running_pid >/dev/null || { tail -30 "$STATE/node.log" >&2; die "the node exited during startup (log: $STATE/node.log)"; }
    status=$(health | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p') || true
    if [ "$status" = green ] || [ "$status" = yellow ]; then
      write_env
      log "up ($status) after $((SECONDS - t0))s: $URL"
      return 0
    fi
    sleep 1
  done
  tail -30 "$STATE/node.log" >&2
  stop
  die "not green/yellow after ${TIMEOUT}s"
}

write_env() {
  mkdir -p "$(dirname "$ENV_FILE")"
  printf 'LAPSEGUARD_OPENSEARCH_URL=%s\n' "$URL" > "$ENV_FILE"
}

stop() {
  local pid
  if pid=$(running_pid); then
    log "stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "still running after 30s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$STATE" "$ENV_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running_pid >/dev/null && health >/dev/null; then echo "up $URL"; else echo "down"; exit 1; fi ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
