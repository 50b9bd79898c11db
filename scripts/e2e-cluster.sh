#!/usr/bin/env bash
# End-to-end proof on a real Kubernetes cluster: deploy lapseguard and run the failure and
# scaling drills, with a summary table.
#
#   scripts/cluster.sh up && scripts/e2e-cluster.sh
#
#   scripts/e2e-cluster.sh [--reuse] [--only DRILL,...] [--skip-build]
#     --reuse        run the drills against the deployment already in the cluster
#                    (default: the namespace must not exist yet; a fresh cluster is
#                    `scripts/cluster.sh down && scripts/cluster.sh up`)
#     --only         drills by function name: smoke rabbitmq_node_loss worker_loss
#                    postgres_loss worker_scaling backend_scaling rolling_update
#                    pdb_eviction rabbitmq_throughput
#     --skip-build   use the images already built (buildah storage) and binaries in target/
#
# What it does (root; the cluster of scripts/cluster.sh, or KUBECONFIG/NETNS of another):
#   1. builds the project's images (scripts/images.sh build --local-base) and the data-service
#      images (scripts/service-images.sh build: PostgreSQL, RabbitMQ, MinIO from Debian
#      packages and the Go module proxy), plus the release image of the rolling-update drill
#      (the same backend under the tag $TAG-e2e-release) — all offline, no registry;
#   2. imports them into the cluster's containerd;
#   3. deploys k8s/overlays/e2e (the dev overlay without logging and without the camera
#      StatefulSet, see its kustomization.yaml) from a copy whose only change is
#      `kustomize edit set image` for the three data-service images; waits until every pod
#      is Ready (bound: 15 minutes) and both Jobs completed;
#   4. runs tests/cluster/e2e.py inside the cluster's network namespace (ClusterIPs and pod
#      IPs reachable): simulated cameras (camera-agent processes) → blurred images, and the
#      drills; prints the summary table, writes target/e2e/summary.json.
# Exit status: 0 when every drill passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//' >&2; }

REUSE=0; ONLY=""; SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reuse) REUSE=1 ;;
    --only) ONLY="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "run as root (it enters the cluster's network namespace)"

NETNS=${LAPSEGUARD_NETNS:-lapseguard}
export KUBECONFIG=${KUBECONFIG:-/var/lib/lapseguard-cluster/pki/admin.kubeconfig}
CACHE=${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}
TOOLS_DIR="${LAPSEGUARD_TOOLS_DIR:-$CACHE/tools}"
KUSTOMIZE_VERSION=v5.7.1     # = scripts/check-k8s.sh
KUSTOMIZE="$TOOLS_DIR/kustomize-$KUSTOMIZE_VERSION/kustomize"
OUT="$ROOT/target/e2e"
TAG=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
RELEASE_TAG="$TAG-e2e-release"
# crun refuses the hybrid cgroup layout of this kind of machine
[ -n "${BUILDAH_RUNTIME:-}" ] || ! command -v runc >/dev/null || export BUILDAH_RUNTIME=runc

kube() { scripts/cluster.sh kubectl "$@"; }
[ -f "$KUBECONFIG" ] && kube get --raw /readyz >/dev/null 2>&1 \
  || die "no cluster answers at $KUBECONFIG: scripts/cluster.sh up"
ip netns list 2>/dev/null | grep -q "^$NETNS\b" || die "network namespace $NETNS missing (scripts/cluster.sh up)"
if kube get namespace lapseguard >/dev/null 2>&1; then
  [ "$REUSE" = 1 ] || die "namespace lapseguard exists: use a fresh cluster (scripts/cluster.sh down && scripts/cluster.sh up) or --reuse"
fi
T0=$SECONDS
mkdir -p "$OUT"

# ---- 1. images and tools --------------------------------------------------------
if [ "$SKIP_BUILD" = 0 ]; then
  log "building the project's images"
  scripts/images.sh build --local-base backend worker renderer camera-agent
  log "building the data-service images"
  scripts/service-images.sh build > "$OUT/service-images.txt"
  log "building the load generators"
  cargo build --release --locked -p camera-agent -p lapseguard-core --example amqp_throughput
else
  scripts/service-images.sh build > "$OUT/service-images.txt"   # cached: prints the names
fi
buildah tag "localhost/lapseguard/backend:$TAG" "localhost/lapseguard/backend:$RELEASE_TAG"
if [ ! -x "$KUSTOMIZE" ]; then
  log "installing kustomize $KUSTOMIZE_VERSION (go install)"
  mkdir -p "$(dirname "$KUSTOMIZE")"
  GOBIN="$(dirname "$KUSTOMIZE")" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
MC=$(ls "$TOOLS_DIR"/mc-*/mc | head -1)
[ -x "$MC" ] || die "mc missing (scripts/service-images.sh build minio makes it)"
ref() { awk -v n="$1" '$1 == n { print $2 }' "$OUT/service-images.txt"; }
PG_IMAGE=$(ref postgres); RABBITMQ_IMAGE=$(ref rabbitmq); MINIO_IMAGE=$(ref minio)
[ -n "$PG_IMAGE" ] && [ -n "$RABBITMQ_IMAGE" ] && [ -n "$MINIO_IMAGE" ] || die "service images missing: $(cat "$OUT/service-images.txt")"
BUILD_S=$((SECONDS - T0))

# ---- 2. import ------------------------------------------------------------------------
T1=$SECONDS
scripts/cluster.sh import "$PG_IMAGE" "$RABBITMQ_IMAGE" "$MINIO_IMAGE" \
  "localhost/lapseguard/backend:$TAG" "localhost/lapseguard/backend:$RELEASE_TAG" \
  "localhost/lapseguard/worker:$TAG" "localhost/lapseguard/renderer:$TAG" "localhost/lapseguard/camera-agent:$TAG"
IMPORT_S=$((SECONDS - T1))

# ---- 3. deploy --------------------------------------------------------------------------
WORK="$OUT/k8s"
rm -rf "$WORK"; cp -r "$ROOT/k8s" "$WORK"
# the base names the upstream images (docker.io/library/postgres…); only they change
(cd "$WORK/overlays/e2e" && "$KUSTOMIZE" edit set image \
  "docker.io/library/postgres=$PG_IMAGE" "docker.io/library/rabbitmq=$RABBITMQ_IMAGE" \
  "quay.io/minio/minio=$MINIO_IMAGE")
T2=$SECONDS
READY_S=0
if [ "$REUSE" = 0 ] || ! kube get namespace lapseguard >/dev/null 2>&1; then
  log "deploying k8s/overlays/e2e"
  "$KUSTOMIZE" build "$WORK/overlays/e2e" > "$OUT/e2e.yaml"
  kube apply -f "$OUT/e2e.yaml" >/dev/null
  log "waiting for every pod to be Ready (bound: 15 min)"
  deadline=$((SECONDS + 900))
  # the long-running pods (a Job's failed first attempt — e.g. the migration before
  # PostgreSQL was up — stays listed as Error and is not waited for)
  SERVING='app.kubernetes.io/component notin (migration,bootstrap)'
  until kube -n lapseguard wait --for=condition=complete job/minio-bootstrap job/backend-migrate --timeout=5s >/dev/null 2>&1 \
        && kube -n lapseguard wait --for=condition=Ready pod -l "$SERVING" --timeout=5s >/dev/null 2>&1 \
        && [ "$(kube -n lapseguard get pods -l "$SERVING" --no-headers 2>/dev/null | grep -vc ' Running ')" = 0 ] \
        && [ "$(kube -n lapseguard get pods -l "$SERVING" --no-headers | wc -l)" -ge 9 ]; do
    [ $SECONDS -lt $deadline ] || { kube -n lapseguard get pods >&2; die "not every pod Ready after 15 min"; }
    sleep 5
  done
  READY_S=$((SECONDS - T2))
  log "all pods Ready after $READY_S s"
  kube -n lapseguard get pods -o wide >&2
fi

# ---- 4. drills ----------------------------------------------------------------------------
FRAMES=()
mkdir -p "$OUT/frames"
for f in testdata/*.png testdata/*.jpg; do
  # 1080p JPEG frames, the size of a timelapse camera's images
  out="$OUT/frames/$(basename "${f%.*}").jpg"
  [ -s "$out" ] || ffmpeg -loglevel error -y -i "$f" \
    -vf "scale=1920:1080:force_original_aspect_ratio=decrease,pad=1920:1080:(ow-iw)/2:(oh-ih)/2,format=yuvj420p" \
    -q:v 3 "$out"
  FRAMES+=("$out")
done
rows=(--extra-row "{\"drill\": \"build images\", \"result\": \"-\", \"seconds\": $BUILD_S, \"detail\": \"scripts/images.sh + scripts/service-images.sh (cached after the first run)\"}"
      --extra-row "{\"drill\": \"import images into containerd\", \"result\": \"-\", \"seconds\": $IMPORT_S, \"detail\": \"8 images\"}")
[ "$READY_S" = 0 ] || rows+=(--extra-row "{\"drill\": \"deploy: every pod Ready\", \"result\": \"PASS\", \"seconds\": $READY_S, \"detail\": \"bound 900 s\"}")
log "running the drills"
set +e
KUBECTL_BIN=$(ls "$CACHE"/k8s/*/bin/kubectl 2>/dev/null | tail -1)   # scripts/cluster.sh builds it
[ -x "${KUBECTL_BIN:-}" ] || KUBECTL_BIN=$(command -v kubectl) || die "kubectl not found"
nsenter --net="/run/netns/$NETNS" env KUBECTL="$KUBECTL_BIN" KUBECONFIG="$KUBECONFIG" \
  python3 tests/cluster/e2e.py --agent "$ROOT/target/release/camera-agent" --mc "$MC" \
  --amqp-bench "$ROOT/target/release/examples/amqp_throughput" --kustomize "$KUSTOMIZE" \
  --overlay "$WORK/overlays/e2e" --next-backend-image "localhost/lapseguard/backend:$RELEASE_TAG" \
  --frames "${FRAMES[@]}" --summary "$OUT/summary.json" ${ONLY:+--only "$ONLY"} "${rows[@]}"
rc=$?
set -e
log "done after $((SECONDS - T0)) s (build $BUILD_S s, import $IMPORT_S s, Ready $READY_S s)"
exit $rc
