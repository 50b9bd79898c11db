#!/usr/bin/env bash
# Checks of the logging pipeline (fluentd/, opensearch/, docs/logging.md) -- part of the
# test suite. One command; exits non-zero on any failure; leaves nothing running that it
# started (an OpenSearch node that was already up is left up).
#
# 1. node       a real OpenSearch 2.19 node on loopback (scripts/opensearch.sh), started
#               here unless one is already running
# 2. tests      pytest tests/logging: the collector's field mapping (Ruby, the same file
#               Fluentd loads) on real captured output of our programs and PostgreSQL --
#               the committed fixtures, plus a fresh capture when the loopback services
#               (scripts/services.sh) and target/debug binaries are there -- indexed into
#               the node through the index template the bootstrap script installs; every
#               saved search and visualization run as Dashboards runs it; the retention
#               policy, the saved objects and the Fluentd configuration checked statically
# 3. fluentd    `fluentd --dry-run` of fluentd/conf/fluent.conf with our plugin directory,
#               where a fluentd with the configuration's plugins exists; otherwise one
#               line says why it was skipped
#
# Settings: LAPSEGUARD_LOGGING_LIVE=0 skips the fresh capture; LAPSEGUARD_OPENSEARCH_PORT
# (scripts/opensearch.sh). Installs on first use: ruby (Debian), a Python venv with
# tests/logging/requirements.txt (PyPI) in ${LAPSEGUARD_TOOLS_DIR:-~/.cache/lapseguard/tools},
# the OpenSearch jars (Maven Central) in ~/.cache/lapseguard.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT" || exit 1

TOOLS_DIR="${LAPSEGUARD_TOOLS_DIR:-$HOME/.cache/lapseguard/tools}"
VENV="$TOOLS_DIR/venv-logging-check"

log() { printf '[check-logging] %s\n' "$*" >&2; }

START=$(date +%s)
declare -a SUMMARY=()
FAILED=0
STARTED_NODE=0

step() { # NAME COMMAND...
  local name="$1"; shift
  local t0; t0=$(date +%s)
  log "---- $name"
  if "$@"; then
    SUMMARY+=("PASS  $name ($(( $(date +%s) - t0 ))s)")
  else
    SUMMARY+=("FAIL  $name ($(( $(date +%s) - t0 ))s)")
    FAILED=1
  fi
}

cleanup() {
  if [ "$STARTED_NODE" = 1 ]; then
    scripts/opensearch.sh stop || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else return 1; fi
}

ensure_ruby() {
  command -v ruby >/dev/null && return 0
  log "installing ruby (Debian): the collector's field mapping is Ruby"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby >/dev/null 2>&1 \
    || { as_root apt-get update -qq >/dev/null 2>&1; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby >/dev/null; }
  command -v ruby >/dev/null
}

ensure_venv() {
  local req="$ROOT/tests/logging/requirements.txt" stamp
  stamp=$(sha256sum "$req" | cut -c1-16)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.lapseguard-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "creating $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || return 1
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q -r "$req" || return 1
  printf '%s' "$stamp" > "$VENV/.lapseguard-stamp"
}

tools() { ensure_ruby && ensure_venv; }

node() {
  if scripts/opensearch.sh status >/dev/null 2>&1; then
    log "OpenSearch already running: using it, leaving it running"
    return 0
  fi
  STARTED_NODE=1
  scripts/opensearch.sh start
}

live_mode() {
  if [ "${LAPSEGUARD_LOGGING_LIVE:-1}" = 0 ]; then
    echo "fresh capture off (LAPSEGUARD_LOGGING_LIVE=0): committed fixtures only"; return 1
  fi
  local bin="${LAPSEGUARD_BIN_DIR:-$ROOT/target/debug}" b
  for b in backend worker lapseguard; do
    [ -x "$bin/$b" ] || { echo "no $bin/$b: committed fixtures only"; return 1; }
  done
  [ -f target/services.env ] && scripts/services.sh status >/dev/null 2>&1 \
    || { echo "loopback services not running (scripts/services.sh start): committed fixtures only"; return 1; }
  command -v psql >/dev/null || { echo "psql not found: committed fixtures only"; return 1; }
  echo "fresh capture: backend, worker, PostgreSQL and lapseguard up --demo, run now"
}

tests() {
  local live=0 why
  if why=$(live_mode); then live=1; fi
  log "$why"
  PYTHONDONTWRITEBYTECODE=1 LAPSEGUARD_LOGGING_REQUIRE_NODE=1 LAPSEGUARD_LOGGING_LIVE=$live \
    "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rs tests/logging
}

DRY_RUN_SKIPPED=""
fluentd_dry_run() {
  local fluentd missing=() gem
  fluentd=$(command -v fluentd || true)
  if [ -z "$fluentd" ] && apt-cache show fluentd >/dev/null 2>&1; then
    log "installing Debian's fluentd"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluentd >/dev/null 2>&1 || true
    fluentd=$(command -v fluentd || true)
  fi
  if [ -z "$fluentd" ]; then
    DRY_RUN_SKIPPED="fluentd not available: skipped dry-run (no fluentd package in this machine's Debian sources; rubygems.org, where Fluentd and its plugins are published, is not reachable from here)"
    echo "$DRY_RUN_SKIPPED"
    return 0
  fi
  for gem in fluent-plugin-opensearch fluent-plugin-kubernetes_metadata_filter fluent-plugin-parser-cri fluent-plugin-concat; do
    fluent-gem list -i "^$gem$" >/dev/null 2>&1 || missing+=("$gem")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    DRY_RUN_SKIPPED="fluentd $("$fluentd" --version 2>/dev/null | awk '{print $2}') is available but without ${missing[*]}: skipped dry-run (the plugins come from rubygems.org)"
    echo "$DRY_RUN_SKIPPED"
    return 0
  fi
  "$fluentd" --dry-run -c fluentd/conf/fluent.conf -p fluentd/plugins
}

step "tools (ruby, pytest venv)" tools
step "OpenSearch node (scripts/opensearch.sh)" node
if scripts/opensearch.sh status >/dev/null 2>&1; then
  step "logging tests (pytest tests/logging)" tests
else
  SUMMARY+=("FAIL  logging tests: no OpenSearch node"); FAILED=1
fi
step "fluentd --dry-run" fluentd_dry_run
if [ -n "$DRY_RUN_SKIPPED" ]; then
  SUMMARY[${#SUMMARY[@]}-1]="SKIP  $DRY_RUN_SKIPPED"
fi

printf '\n==== logging checks: %s (%ss) ====\n' "$([ $FAILED = 0 ] && echo PASSED || echo FAILED)" "$(( $(date +%s) - START ))"
printf '  %s\n' "${SUMMARY[@]}"
exit $FAILED
