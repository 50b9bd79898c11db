#!/usr/bin/env bash
# The whole test suite: start the real services (PostgreSQL, RabbitMQ with MQTT, MinIO)
# on loopback, run every test of the workspace against them, stop them again, also
# when a test fails. Installs whatever is missing on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '\n==> %s\n' "$*" >&2; }

cleanup() {
  log "stopping services"
  scripts/services.sh stop || true
}
trap cleanup EXIT

log "starting services"
scripts/services.sh start

set -a
# shellcheck disable=SC1091
. target/services.env
set +a

log "fetching the face model and ONNX Runtime"
eval "$(scripts/fetch-models.sh)"
export ORT_DYLIB_PATH LAPSEGUARD_MODEL_PATH LAPSEGUARD_MODEL_FP32_PATH

log "installing Chromium and the Playwright driver for the browser test"
eval "$(scripts/browser-deps.sh)"
export LAPSEGUARD_CHROMIUM

log "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "checking the Kubernetes manifests"
scripts/check-k8s.sh

log "running the test suite"
cargo test --workspace --locked "$@"

log "checking the logging pipeline (real OpenSearch node, Fluentd field mapping, saved searches)"
scripts/check-logging.sh
