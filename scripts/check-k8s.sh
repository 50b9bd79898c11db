#!/usr/bin/env bash
# Checks of the Kubernetes manifests (k8s/) — part of the test suite.
#
#   scripts/check-k8s.sh                       run every check, print a summary, exit 1 on any failure
#   scripts/check-k8s.sh --update-crd-schemas  regenerate tests/k8s/schemas/ from the pinned operator CRDs
#
# 1. render    every overlay (k8s/overlays/*) with a pinned kustomize; any warning is a
#              failure. `kubectl kustomize` (the kustomize inside kubectl, what
#              `kubectl apply -k` uses) must render each overlay as well when kubectl is present.
# 2. schemas   strict validation (unknown fields are errors) against the Kubernetes
#              schemas of $KUBE_VERSIONS (PyPI kubernetes-validate) and the vendored
#              schemas of the custom resources used (CloudNativePG Cluster, KEDA
#              ScaledObject/TriggerAuthentication; tests/k8s/schemas, generated from the
#              CRDs in the operators' Go modules). A kind without a schema fails.
# 3. lint      checkov (PyPI) on the rendered manifests, containers/{,services/}*.Containerfile and
#              fluentd/Containerfile:
#              zero findings; exceptions only as checkov.io/skipN annotations (manifests)
#              or `# checkov:skip=ID: reason` lines (Containerfiles), each with its reason
#              (the policy test checks the annotations carry one).
# 4. policy    pytest tests/k8s: probes, requests/limits, security contexts, PDBs, images
#              through kustomize images:, network policies, and the manifests against
#              the programs' real contract (subcommands, settings, routes, ports).
#
# Installs what it needs on first use into ${LAPSEGUARD_TOOLS_DIR:-~/.cache/lapseguard/tools}
# (cache that directory in CI): kustomize with `go install` (Go module proxy), two Python
# venvs from PyPI. Needs: bash, python3 (>= 3.10, venv), go (for kustomize).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT" || exit 1

# ------------------------------------------------------------------ pins ----
KUSTOMIZE_VERSION=v5.7.1          # newest kustomize/v5 that builds with Go 1.26 (v5.8 needs Go 1.27)
KUBE_VERSIONS=(1.37.0 1.33.0)     # current Kubernetes, and the oldest we still claim to support
CHECKOV_VERSION=3.3.30
CNPG_MODULE=github.com/cloudnative-pg/cloudnative-pg@v1.30.1
KEDA_MODULE=github.com/kedacore/keda/v2@v2.21.0

TOOLS_DIR="${LAPSEGUARD_TOOLS_DIR:-$HOME/.cache/lapseguard/tools}"
KUSTOMIZE_DIR="$TOOLS_DIR/kustomize-$KUSTOMIZE_VERSION"
KUSTOMIZE="$KUSTOMIZE_DIR/kustomize"
VENV="$TOOLS_DIR/venv-k8s-check"
CHECKOV_VENV="$TOOLS_DIR/venv-checkov-$CHECKOV_VERSION"
OUT="$ROOT/target/k8s-rendered"

[ -d /usr/local/go/bin ] && PATH="$PATH:/usr/local/go/bin"

log() { printf '[check-k8s] %s\n' "$*" >&2; }
die() { printf '[check-k8s] ERROR: %s\n' "$*" >&2; exit 1; }

START=$(date +%s)
declare -a SUMMARY=()
FAILED=0
# step NAME COMMAND... : run a check, record PASS/FAIL and its duration
step() {
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

# ---------------------------------------------------------------- tools -----
ensure_kustomize() {
  if [ -x "$KUSTOMIZE" ] && "$KUSTOMIZE" version 2>/dev/null | grep -q "${KUSTOMIZE_VERSION#v}"; then
    return 0
  fi
  command -v go >/dev/null || die "go not found: needed once to install kustomize $KUSTOMIZE_VERSION (Debian: golang-go, or /usr/local/go)"
  log "installing kustomize $KUSTOMIZE_VERSION into $KUSTOMIZE_DIR (go install)"
  mkdir -p "$KUSTOMIZE_DIR"
  GOBIN="$KUSTOMIZE_DIR" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
    || die "go install kustomize failed"
}

# make_venv DIR STAMP PIP_ARGS... : (re)create a venv unless its stamp matches
make_venv() {
  local dir="$1" stamp="$2"; shift 2
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.lapseguard-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "creating $dir"
  rm -rf "$dir"
  python3 -m venv "$dir" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q "$@" || return 1
  printf '%s' "$stamp" > "$dir/.lapseguard-stamp"
}

ensure_venvs() {
  command -v python3 >/dev/null || die "python3 not found"
  local req="$ROOT/tests/k8s/requirements.txt" reqck="$ROOT/tests/k8s/requirements-checkov.txt"
  make_venv "$VENV" "$(sha256sum "$req" | cut -c1-16)" -r "$req" \
    || die "installing tests/k8s/requirements.txt failed"
  # The frozen checkov set is resolved for CPython 3.11; elsewhere fall back to the
  # pinned checkov with whatever dependencies pip resolves.
  if ! make_venv "$CHECKOV_VENV" "$(sha256sum "$reqck" | cut -c1-16)" -r "$reqck"; then
    log "frozen checkov requirements did not install here; installing checkov==$CHECKOV_VERSION alone"
    make_venv "$CHECKOV_VENV" "checkov==$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION" \
      || die "installing checkov failed"
  fi
}

# ------------------------------------------------------- --update-crd-schemas
update_crd_schemas() {
  command -v go >/dev/null || die "go is needed to fetch the operators' Go modules"
  ensure_venvs
  local cnpg keda
  cnpg=$(go mod download -json "$CNPG_MODULE" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download $CNPG_MODULE failed"
  keda=$(go mod download -json "$KEDA_MODULE" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download $KEDA_MODULE failed"
  rm -rf tests/k8s/schemas
  "$VENV/bin/python" tests/k8s/crd_schemas.py --out tests/k8s/schemas \
    --crd "$CNPG_MODULE=$cnpg/config/crd/bases/postgresql.cnpg.io_clusters.yaml" \
    --crd "$KEDA_MODULE=$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
    --crd "$KEDA_MODULE=$keda/config/crd/bases/keda.sh_triggerauthentications.yaml"
}

# --------------------------------------------------------------- checks -----
render() {
  rm -rf "$OUT"; mkdir -p "$OUT"
  local ok=0 overlay name warn
  for overlay in k8s/overlays/*/; do
    name=$(basename "$overlay")
    if ! "$KUSTOMIZE" build "$overlay" > "$OUT/$name.yaml" 2> "$OUT/$name.stderr"; then
      log "kustomize build $overlay failed:"; cat "$OUT/$name.stderr" >&2; ok=1; continue
    fi
    if [ -s "$OUT/$name.stderr" ]; then
      log "kustomize build $overlay printed warnings:"; cat "$OUT/$name.stderr" >&2; ok=1
    fi
    log "$name: $(grep -c '^kind: ' "$OUT/$name.yaml") objects -> ${OUT#"$ROOT"/}/$name.yaml"
    if command -v kubectl >/dev/null; then
      warn=$(kubectl kustomize "$overlay" 2>&1 >/dev/null) || { log "kubectl kustomize $overlay failed: $warn"; ok=1; }
      [ -z "$warn" ] || { log "kubectl kustomize $overlay warned: $warn"; ok=1; }
    fi
  done
  [ -n "$(ls "$OUT"/*.yaml 2>/dev/null)" ] || { log "no overlay rendered"; ok=1; }
  return $ok
}

schemas() {
  [ -f tests/k8s/schemas/SOURCES.txt ] || { log "tests/k8s/schemas missing: run $0 --update-crd-schemas"; return 1; }
  local args=()
  for v in "${KUBE_VERSIONS[@]}"; do args+=(--kube-version "$v"); done
  "$VENV/bin/python" tests/k8s/validate.py "${args[@]}" "$OUT"/*.yaml
}

lint() {
  # --skip-download: no calls home (no policies fetched, nothing uploaded).
  # Kubernetes manifests as rendered, and the Containerfiles (checkov only recognises
  # files named Dockerfile, so each is copied under that name).
  local report="$OUT/checkov" cf="$OUT/containerfiles" f
  rm -rf "$report" "$cf"
  for f in containers/*.Containerfile containers/services/*.Containerfile; do
    mkdir -p "$cf/$(basename "$f" .Containerfile)"
    cp "$f" "$cf/$(basename "$f" .Containerfile)/Dockerfile"
  done
  # the log collector's image (k8s/components/logging)
  mkdir -p "$cf/fluentd" && cp fluentd/Containerfile "$cf/fluentd/Dockerfile"
  "$CHECKOV_VENV/bin/checkov" --framework kubernetes --framework dockerfile --directory "$OUT" --skip-download \
    --compact --output cli --output json --output-file-path "$report" >/dev/null 2>"$OUT/checkov.stderr"
  if ! "$VENV/bin/python" - "$report/results_json.json" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"checkov produced no report: {e}")
reports = data if isinstance(data, list) else [data]
s = {k: sum(r.get("summary", {}).get(k, 0) for r in reports)
     for k in ("passed", "failed", "skipped", "parsing_errors", "resource_count")}
for r in reports:
    print(f"checkov {r.get('check_type')}: {r.get('summary')}", file=sys.stderr)
    for f in r.get("results", {}).get("failed_checks", []):
        print(f"  FAILED {f['check_id']} {f['check_name']!r}: {f['resource']} "
              f"({f.get('file_path')}:{'-'.join(map(str, f.get('file_line_range', [])))})", file=sys.stderr)
print(f"checkov: {s['resource_count']} resources, {s['passed']} passed, {s['failed']} failed, "
      f"{s['skipped']} skipped (annotated), {s['parsing_errors']} parsing errors", file=sys.stderr)
sys.exit(0 if s["failed"] == 0 and s["parsing_errors"] == 0 and s["resource_count"] > 0 else 1)
PY
  then
    # The full report (passed and skipped checks too) is in $report.
    tail -20 "$OUT/checkov.stderr" >&2
    return 1
  fi
}

policy() {
  PYTHONDONTWRITEBYTECODE=1 LAPSEGUARD_K8S_RENDERED="$OUT" "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rs tests/k8s
}

# ----------------------------------------------------------------- main -----
case "${1:-}" in
  --update-crd-schemas) update_crd_schemas; exit $? ;;
  -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (see --help)" ;;
esac

t0=$(date +%s)
ensure_kustomize
ensure_venvs
SUMMARY+=("ok    tools (kustomize $KUSTOMIZE_VERSION, kubernetes-validate, checkov $CHECKOV_VERSION; $(( $(date +%s) - t0 ))s)")

step "render overlays ($(basename -a k8s/overlays/*/ | tr '\n' ' '| sed 's/ $//'))" render
if [ -n "$(ls "$OUT"/*.yaml 2>/dev/null)" ]; then
  step "strict schema validation (Kubernetes ${KUBE_VERSIONS[*]} + CRDs)" schemas
  step "checkov lint of manifests and Containerfiles (0 findings; justified skips only)" lint
  step "policy and contract tests (pytest tests/k8s)" policy
fi

printf '\n==== k8s checks: %s (%ss) ====\n' "$([ $FAILED = 0 ] && echo PASSED || echo FAILED)" "$(( $(date +%s) - START ))"
printf '  %s\n' "${SUMMARY[@]}"
exit $FAILED
