#!/usr/bin/env bash
# Build the data-service images lapseguard's Kubernetes manifests run — PostgreSQL,
# RabbitMQ (with its Kubernetes peer-discovery and MQTT plugins), MinIO (+ mc) — on this
# machine, without any container registry: from Debian packages and the Go module proxy.
# For clusters that can pull the upstream images (docker.io/library/postgres,
# docker.io/library/rabbitmq, quay.io/minio/minio) none of this is needed.
#
#   scripts/service-images.sh build [--tool buildah|podman|docker] [IMAGE...]
#   IMAGE: postgres rabbitmq minio (default: all)
#
# Images (the upstream names under localhost/lapseguard-services/, same conventions, so the
# manifests run them unchanged; point an overlay at them with kustomize images:):
#   localhost/lapseguard-services/postgres:18.6       Debian forky postgresql-18
#   localhost/lapseguard-services/rabbitmq:4.3.6-management   Debian forky rabbitmq-server
#   localhost/lapseguard-services/minio:<minio version>       minio + mc, go install
# Bases: localhost/debian:forky and localhost/debian:12, made with debootstrap when missing
# (scripts/lib/local-base.sh; root, the Debian archive). MinIO and mc builds are cached in
# ~/.cache/lapseguard/tools. Prints one "NAME REF" line per image on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
log() { printf '[service-images] %s\n' "$*" >&2; }
die() { printf '[service-images] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; }

# Pinned versions. PostgreSQL and RabbitMQ match the upstream tags of k8s/base.
PG_VERSION=18.6-3                    # Debian postgresql-18 (upstream 18.6)
RABBITMQ_VERSION=4.3.6-1             # Debian rabbitmq-server
MINIO_VERSION=${LAPSEGUARD_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}   # = scripts/services.sh
MC_VERSION=${LAPSEGUARD_MC_VERSION:-v0.0.0-20250313080218-cf909e1063a9}         # github.com/minio/mc@latest
REPO=localhost/lapseguard-services
TOOLS_DIR="${LAPSEGUARD_TOOLS_DIR:-${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}/tools}"   # = scripts/services.sh

[ "${1:-}" = build ] || { usage; case "${1:-}" in -h|--help) exit 0 ;; esac; exit 2; }
shift
TOOL=""; IMAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tool) TOOL="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    postgres|rabbitmq|minio) IMAGES+=("$1") ;;
    *) usage; die "unknown argument: $1" ;;
  esac
  shift
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(postgres rabbitmq minio)
if [ -z "$TOOL" ]; then
  for t in buildah podman docker; do command -v "$t" >/dev/null && { TOOL=$t; break; }; done
fi
[ -n "$TOOL" ] || die "none of buildah, podman, docker found (Debian: apt-get install buildah)"

# shellcheck source=lib/local-base.sh
. "$ROOT/scripts/lib/local-base.sh"

go_build() { # go_build MODULE VERSION NAME -> path of the cached binary
  local module="$1" version="$2" name="$3"
  local dir="$TOOLS_DIR/$name-$version"
  if [ ! -x "$dir/$name" ]; then
    command -v go >/dev/null || die "go not found (Debian: apt-get install golang-go, or go.dev)"
    log "go install $module@$version (a few minutes, once)"
    local tmp; mkdir -p "$TOOLS_DIR"; tmp=$(mktemp -d "$TOOLS_DIR/.$name-build.XXXXXX")
    GOBIN="$tmp" GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
      go install -trimpath -ldflags "-s -w" "$module@$version" >&2 || { rm -rf "$tmp"; die "building $name failed"; }
    mkdir -p "$dir"; mv -f "$tmp/$name" "$dir/$name"; rm -rf "$tmp"
  fi
  printf '%s\n' "$dir/$name"
}

build() { # build NAME REF BASE [build args…]
  local name="$1" ref="$2" base="$3"; shift 3
  local file="containers/services/$name.Containerfile"
  log "$TOOL: $ref ($file, base $base)"
  case "$TOOL" in
    buildah) buildah bud --layers --ignorefile containers/services/dockerignore -f "$file" -t "$ref" --build-arg "BASE_IMAGE=$base" "$@" . >&2 ;;
    podman)  podman build --ignorefile containers/services/dockerignore -f "$file" -t "$ref" --build-arg "BASE_IMAGE=$base" "$@" . >&2 ;;
    docker)  DOCKER_BUILDKIT=1 docker build -f "$file" -t "$ref" --build-arg "BASE_IMAGE=$base" "$@" . >&2 ;;
  esac
  printf '%s %s\n' "$name" "$ref"
}

for img in "${IMAGES[@]}"; do
  case "$img" in
    postgres)
      local_base_image "$TOOL" forky localhost/debian:forky || die "no base image"
      build postgres "$REPO/postgres:${PG_VERSION%-*}" localhost/debian:forky --build-arg "PG_VERSION=$PG_VERSION" ;;
    rabbitmq)
      local_base_image "$TOOL" forky localhost/debian:forky || die "no base image"
      build rabbitmq "$REPO/rabbitmq:${RABBITMQ_VERSION%-*}-management" localhost/debian:forky \
        --build-arg "RABBITMQ_VERSION=$RABBITMQ_VERSION" ;;
    minio)
      local_base_image "$TOOL" bookworm localhost/debian:12 || die "no base image"
      minio=$(go_build github.com/minio/minio "$MINIO_VERSION" minio)
      mc=$(go_build github.com/minio/mc "$MC_VERSION" mc)
      stage="$ROOT/target/service-images"; mkdir -p "$stage/minio"
      install -m 0755 "$minio" "$mc" "$stage/minio/"
      install -m 0644 /etc/ssl/certs/ca-certificates.crt "$stage/ca-certificates.crt"
      build minio "$REPO/minio:$MINIO_VERSION" localhost/debian:12 ;;
  esac
done
