#!/usr/bin/env bash
# Install what the headless-browser check (tests/browser/gallery.mjs) needs:
#   * Debian's chromium (/usr/bin/chromium), via apt-get, only when it is missing;
#   * tests/browser/node_modules (playwright-core, pinned in package-lock.json),
#     via `npm ci`, only when node_modules is missing or older than the lock file.
#
# Usage:  eval "$(scripts/browser-deps.sh)"; export LAPSEGUARD_CHROMIUM
#
# Idempotent and quiet when everything is in place. Progress goes to stderr; the
# only line on stdout is, at the end:
#   LAPSEGUARD_CHROMIUM=/usr/bin/chromium
#
# No browser is downloaded by npm: playwright-core carries no browser and never
# fetches one; the check drives Debian's chromium through executablePath.
#
# Requires: Debian 12 (bookworm) with apt-get, Node.js >= 20 with npm; root or sudo
# for the apt-get step (only when chromium is missing).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
BROWSER_DIR="$REPO_ROOT/tests/browser"
CHROMIUM=/usr/bin/chromium

log() { printf '==> %s\n' "$*" >&2; }

# Everything below writes to stderr only; stdout is reserved for the final line.
{
  if [[ -x "$CHROMIUM" ]]; then
    log "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  else
    log "chromium missing: installing Debian package chromium"
    if [[ $(id -u) -eq 0 ]]; then
      SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo)
    else
      log "error: not root and sudo is not available; cannot install chromium"
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends chromium
    if [[ ! -x "$CHROMIUM" ]]; then
      log "error: apt-get finished but $CHROMIUM is not there"
      exit 1
    fi
    log "installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  fi

  if ! command -v npm >/dev/null 2>&1; then
    log "error: npm not found (Node.js >= 20 with npm is required)"
    exit 1
  fi

  lock="$BROWSER_DIR/package-lock.json"
  modules="$BROWSER_DIR/node_modules"
  # npm ci writes node_modules/.package-lock.json last; use it as the stamp.
  stamp="$modules/.package-lock.json"
  if [[ ! -d "$modules" || ! -f "$stamp" || "$lock" -nt "$stamp" ]]; then
    log "installing tests/browser node modules (npm ci)"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund)
  else
    log "tests/browser/node_modules is up to date"
  fi
} >&2

echo "LAPSEGUARD_CHROMIUM=$CHROMIUM"
