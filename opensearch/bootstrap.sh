#!/bin/sh
# Loads lapseguard's logging setup into OpenSearch and OpenSearch Dashboards. Idempotent:
# run it as often as you like (the bootstrap Job runs it on every `kubectl apply -k`;
# tests/logging runs it twice against a real node).
#
#   1. index template  lapseguard-logs      PUT _index_template (replaces the previous one)
#   2. ISM policy      lapseguard-logs      created, or updated in place (seq_no/primary_term)
#                                           when it differs; attached to existing indices
#   3. saved objects   index pattern, searches, visualizations, dashboard:
#                                           Dashboards' import API with overwrite=true
#
# Environment:
#   OPENSEARCH_URL      e.g. https://opensearch:9200                     (required)
#   OPENSEARCH_USER / OPENSEARCH_PASSWORD   basic auth (optional)
#   OPENSEARCH_INSECURE=true                 accept a self-signed certificate (dev)
#   DASHBOARDS_URL      e.g. http://opensearch-dashboards:5601 (empty: skip step 3)
#   REQUIRE_ISM=false   a cluster without the ISM plugin only warns (default: fail)
#   ASSETS_DIR          where index-template.json, ism-policy.json, saved-objects.ndjson are
#   WAIT_SECONDS        how long to wait for OpenSearch/Dashboards (default 600)
# Needs: sh, curl, sed, grep, cmp (all in the OpenSearch image).
set -eu

: "${OPENSEARCH_URL:?OPENSEARCH_URL is required}"
ASSETS_DIR=${ASSETS_DIR:-$(dirname "$0")}
DASHBOARDS_URL=${DASHBOARDS_URL:-}
REQUIRE_ISM=${REQUIRE_ISM:-true}
WAIT_SECONDS=${WAIT_SECONDS:-600}
POLICY=lapseguard-logs
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

log() { printf '[logging-bootstrap] %s\n' "$*" >&2; }

# os METHOD PATH [curl args...]: prints the body, the HTTP status in $TMP/status
os() {
  method=$1 path=$2; shift 2
  set -- -sS -X "$method" -o "$TMP/body" -w '%{http_code}' -H 'content-type: application/json' "$@"
  [ "${OPENSEARCH_INSECURE:-false}" = true ] && set -- -k "$@"
  if [ -n "${OPENSEARCH_USER:-}" ]; then
    # Credentials through a config file, not the command line (ps shows arguments).
    printf 'user = "%s:%s"\n' "$OPENSEARCH_USER" "${OPENSEARCH_PASSWORD:-}" > "$TMP/auth"
    set -- -K "$TMP/auth" "$@"
  fi
  curl "$@" "$OPENSEARCH_URL$path" > "$TMP/status" || echo 000 > "$TMP/status"
  cat "$TMP/body" 2>/dev/null || true
}
status() { cat "$TMP/status"; }

wait_for() { # NAME COMMAND...: retry until it succeeds or WAIT_SECONDS pass
  name=$1; shift
  waited=0
  until "$@"; do
    [ "$waited" -ge "$WAIT_SECONDS" ] && { log "$name not reachable after ${WAIT_SECONDS}s"; exit 1; }
    sleep 5; waited=$((waited + 5))
  done
}

cluster_up() {
  os GET '/_cluster/health?wait_for_status=yellow&timeout=5s' >/dev/null
  [ "$(status)" = 200 ]
}
log "waiting for OpenSearch at $OPENSEARCH_URL"
wait_for OpenSearch cluster_up

# 1. index template ------------------------------------------------------------------
os PUT /_index_template/lapseguard-logs --data-binary @"$ASSETS_DIR/index-template.json" >/dev/null
[ "$(status)" = 200 ] || { log "index template: HTTP $(status): $(cat "$TMP/body")"; exit 1; }
log "index template lapseguard-logs installed"

# 2. ISM policy ------------------------------------------------------------------------
os GET "/_plugins/_ism/policies/$POLICY" > "$TMP/current"
if [ "$(status)" = 400 ] && grep -q 'no handler found' "$TMP/current"; then
  # The Index State Management plugin is part of the OpenSearch distribution image;
  # a node built without it (like the test node of tests/logging) has no such API.
  [ "$REQUIRE_ISM" = true ] && { log "this cluster has no Index State Management plugin: no retention"; exit 1; }
  log "WARNING: no Index State Management plugin on this cluster: retention policy NOT installed"
else
  case "$(status)" in
    200)
      seq=$(sed -n 's/.*"_seq_no":\([0-9]*\).*/\1/p' "$TMP/current")
      term=$(sed -n 's/.*"_primary_term":\([0-9]*\).*/\1/p' "$TMP/current")
      # Update only when the policy differs (each update bumps its version).
      sed -n 's/.*\("states":\[.*\]\),"ism_template".*/\1/p' "$TMP/current" > "$TMP/states.now"
      tr -d ' \n' < "$ASSETS_DIR/ism-policy.json" | sed -n 's/.*\("states":\[.*\]\),"ism_template".*/\1/p' > "$TMP/states.new"
      if cmp -s "$TMP/states.now" "$TMP/states.new"; then
        log "ISM policy $POLICY unchanged"
      else
        os PUT "/_plugins/_ism/policies/$POLICY?if_seq_no=$seq&if_primary_term=$term" \
          --data-binary @"$ASSETS_DIR/ism-policy.json" >/dev/null
        [ "$(status)" = 200 ] || { log "ISM policy update: HTTP $(status): $(cat "$TMP/body")"; exit 1; }
        log "ISM policy $POLICY updated"
      fi
      ;;
    404)
      os PUT "/_plugins/_ism/policies/$POLICY" --data-binary @"$ASSETS_DIR/ism-policy.json" >/dev/null
      [ "$(status)" = 201 ] || { log "ISM policy create: HTTP $(status): $(cat "$TMP/body")"; exit 1; }
      log "ISM policy $POLICY created"
      ;;
    *) log "ISM policy: HTTP $(status): $(cat "$TMP/body")"; exit 1 ;;
  esac
  # ism_template only catches indices created from now on: attach the existing ones
  # (indices that already have a policy are reported as failures and left alone).
  os POST '/_plugins/_ism/add/lapseguard-logs-*' --data "{\"policy_id\":\"$POLICY\"}" >/dev/null
  log "ISM policy attached to existing indices: HTTP $(status)"
fi

# 3. saved objects -----------------------------------------------------------------
if [ -z "$DASHBOARDS_URL" ]; then
  log "DASHBOARDS_URL not set: saved objects not imported"
  exit 0
fi
dash() { # PATH [curl args...]
  path=$1; shift
  set -- -sS -o "$TMP/body" -w '%{http_code}' -H 'osd-xsrf: true' "$@"
  if [ -n "${OPENSEARCH_USER:-}" ]; then
    printf 'user = "%s:%s"\n' "$OPENSEARCH_USER" "${OPENSEARCH_PASSWORD:-}" > "$TMP/auth"
    set -- -K "$TMP/auth" "$@"
  fi
  curl "$@" "$DASHBOARDS_URL$path" > "$TMP/status" || echo 000 > "$TMP/status"
}
dashboards_up() {
  dash /api/status
  [ "$(status)" = 200 ] && grep -q '"state":"green"' "$TMP/body"
}
log "waiting for OpenSearch Dashboards at $DASHBOARDS_URL"
wait_for Dashboards dashboards_up
dash '/api/saved_objects/_import?overwrite=true' -X POST -F "file=@$ASSETS_DIR/saved-objects.ndjson"
if [ "$(status)" != 200 ] || ! grep -q '"success":true' "$TMP/body"; then
  log "saved objects import: HTTP $(status): $(cat "$TMP/body")"; exit 1
fi
log "saved objects imported: $(sed -n 's/.*"successCount":\([0-9]*\).*/\1/p' "$TMP/body")"
