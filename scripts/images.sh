#!/usr/bin/env bash
# Build (and optionally push) the lapseguard container images from containers/*.Containerfile.
#
#   scripts/images.sh build [options] [IMAGE...]      IMAGE: backend worker worker-gpu renderer camera-agent
#
# Options:
#   --tag TAG             image tag (default: the workspace version in Cargo.toml)
#   --push REGISTRY       tag as REGISTRY/lapseguard/IMAGE:TAG, push, print the digests
#                         (put them into the overlay's kustomize images: as digest:)
#   --from-source         build everything inside the builder images (default target of
#                         each Containerfile; needs the base images and crates.io/PyPI)
#   --base-image IMG      runtime base of all but worker-gpu (build arg BASE_IMAGE);
#                         for offline builds a local Debian 12+ image, e.g. localhost/debian:12
#   --gpu-base-image IMG  runtime base of worker-gpu (build arg GPU_BASE_IMAGE)
#   --cuda-from-pypi      put the CUDA 13 + cuDNN 9 libraries from pinned PyPI wheels into
#                         the worker-gpu image (for a base without CUDA, e.g. the local Debian)
#   --local-base          no registry at all: use localhost/debian:12 as --base-image (and as
#                         --gpu-base-image with --cuda-from-pypi; worker-gpu is skipped
#                         otherwise), creating it when missing from `debootstrap --variant=minbase
#                         bookworm` (root, debootstrap, the Debian archive; DEBIAN_MIRROR); the
#                         rootfs tarball is cached in ~/.cache/lapseguard/images/ and reused
#   --tool buildah|podman|docker   (default: the first one found, in that order)
#
# Default ("prebuilt", works offline given a local base image): the binaries are built on
# this machine (cargo build --release --locked), ONNX Runtime and the model are fetched
# with scripts/fetch-models.sh (from its cache when present) and staged under
# target/images/, and each image is built with `--target prebuilt` — the build only
# copies files into the base image, it downloads nothing and runs nothing in it (but for
# the renderer, which installs Debian's ffmpeg: the base's Debian archive must be reachable).
#
# Images: localhost/lapseguard/IMAGE:TAG (or REGISTRY/lapseguard/IMAGE:TAG with --push),
# the names k8s/overlays/dev uses (newName localhost/lapseguard/IMAGE).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//' >&2; }

# CUDA 13 runtime libraries for onnxruntime-gpu 1.31.1 (--cuda-from-pypi), installed --no-deps.
CUDA_WHEELS=(nvidia-cuda-runtime==13.5.37 nvidia-cublas==13.10.0.20 nvidia-curand==10.4.4.72
             nvidia-cufft==12.4.0.43 nvidia-cuda-nvrtc==13.5.37 nvidia-nvjitlink==13.5.37
             nvidia-cudnn-cu13==9.27.0.42)

[ "${1:-}" = build ] || { usage; [ "${1:-}" = -h ] || [ "${1:-}" = --help ] && exit 0; exit 2; }
shift

TAG=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
REGISTRY=""; FROM_SOURCE=0; CUDA_PYPI=0; TOOL=""; BASE_IMAGE=""; GPU_BASE_IMAGE=""; LOCAL_BASE=0
IMAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift ;;
    --push) REGISTRY="${2%/}"; shift ;;
    --from-source) FROM_SOURCE=1 ;;
    --base-image) BASE_IMAGE="$2"; shift ;;
    --gpu-base-image) GPU_BASE_IMAGE="$2"; shift ;;
    --cuda-from-pypi) CUDA_PYPI=1 ;;
    --local-base) LOCAL_BASE=1 ;;
    --tool) TOOL="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    backend|worker|worker-gpu|renderer|camera-agent) IMAGES+=("$1") ;;
    *) usage; die "unknown argument: $1" ;;
  esac
  shift
done
[ -n "$TAG" ] || die "no --tag and no version in Cargo.toml"
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(backend worker worker-gpu renderer camera-agent)

if [ -z "$TOOL" ]; then
  for t in buildah podman docker; do command -v "$t" >/dev/null && { TOOL=$t; break; }; done
fi
[ -n "$TOOL" ] || die "none of buildah, podman, docker found (Debian: apt-get install buildah)"

# ---- --local-base: a Debian 12 base image made here, without any registry -------
LOCAL_BASE_REF=localhost/debian:12
# shellcheck source=lib/local-base.sh
. "$ROOT/scripts/lib/local-base.sh"
make_local_base() { local_base_image "$TOOL" bookworm "$LOCAL_BASE_REF" || die "no local base image"; }
if [ "$LOCAL_BASE" = 1 ]; then
  make_local_base
  [ -n "$BASE_IMAGE" ] || BASE_IMAGE=$LOCAL_BASE_REF
  if [ -z "$GPU_BASE_IMAGE" ]; then
    if [ "$CUDA_PYPI" = 1 ]; then GPU_BASE_IMAGE=$LOCAL_BASE_REF
    else
      keep=(); for img in "${IMAGES[@]}"; do [ "$img" = worker-gpu ] || keep+=("$img"); done
      [ ${#keep[@]} = ${#IMAGES[@]} ] || log "skipping worker-gpu: the local base has no CUDA (add --cuda-from-pypi, or --gpu-base-image)"
      IMAGES=(${keep[@]+"${keep[@]}"})
    fi
  fi
fi

# Which workspace members exist (camera-agent may not be there yet).
crate_exists() { [ -f "$1/Cargo.toml" ]; }
binary_of() { case "$1" in worker-gpu) echo worker ;; *) echo "$1" ;; esac; }
todo=()
for img in "${IMAGES[@]}"; do
  if crate_exists "$(binary_of "$img")"; then todo+=("$img"); else log "skipping $img: crate $(binary_of "$img")/ is not in the workspace"; fi
done
[ ${#todo[@]} -gt 0 ] || die "nothing to build"

STAGE="$ROOT/target/images"
if [ "$FROM_SOURCE" = 0 ]; then
  # ---- host-side build and staging ------------------------------------------
  bins=()
  for img in "${todo[@]}"; do bins+=(-p "$(binary_of "$img")"); done
  log "cargo build --release --locked ${bins[*]}"
  cargo build --release --locked "${bins[@]}"
  mkdir -p "$STAGE"
  ca=/etc/ssl/certs/ca-certificates.crt
  [ -f "$ca" ] || die "$ca missing (Debian: apt-get install ca-certificates)"
  install -m 0644 "$ca" "$STAGE/ca-certificates.crt"

  stage_models() { # stage_models DIR [--gpu]
    local dir="$1"; shift
    local env; env=$(scripts/fetch-models.sh "$@")
    local ort model
    ort=$(printf '%s\n' "$env" | sed -n 's/^ORT_DYLIB_PATH=//p' | tail -1)
    model=$(printf '%s\n' "$env" | sed -n 's/^LAPSEGUARD_MODEL_PATH=//p' | tail -1)
    [ -f "$ort" ] && [ -f "$model" ] || die "fetch-models.sh gave no usable paths"
    rm -rf "$dir"; mkdir -p "$dir/onnxruntime" "$dir/models" "$dir/cuda/lib"
    install -m 0755 "$ort" "$dir/onnxruntime/libonnxruntime.so"
    for lib in "$(dirname "$ort")"/libonnxruntime_providers_*.so; do install -m 0755 "$lib" "$dir/onnxruntime/"; done
    install -m 0644 "$model" "$model.sha256" "$dir/models/"
  }
  for img in "${todo[@]}"; do
    case "$img" in
      worker) stage_models "$STAGE/worker" ;;
      worker-gpu)
        stage_models "$STAGE/worker-gpu" --gpu
        if [ "$CUDA_PYPI" = 1 ]; then
          log "staging CUDA 13 libraries from PyPI: ${CUDA_WHEELS[*]}"
          wheels="$STAGE/.cuda-wheels"; mkdir -p "$wheels"
          python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
            --progress-bar off --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux2014_x86_64 --python-version 3.11 -d "$wheels" "${CUDA_WHEELS[@]}" >&2
          python3 - "$wheels" "$STAGE/worker-gpu/cuda/lib" <<'PY'
import os, sys, zipfile, glob
wheels, out = sys.argv[1], sys.argv[2]
for whl in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if "/lib/" in n and ".so" in os.path.basename(n):
                dst = os.path.join(out, os.path.basename(n))
                with z.open(n) as src, open(dst, "wb") as f:
                    f.write(src.read())
                os.chmod(dst, 0o755)
print(f"[images] {len(os.listdir(out))} CUDA libraries in {out}", file=sys.stderr)
PY
        fi ;;
    esac
  done
fi

# ---- image builds -------------------------------------------------------------
build_one() {
  local img="$1" ref="$2"
  local file="containers/$img.Containerfile" args=()
  [ "$FROM_SOURCE" = 0 ] && args+=(--target prebuilt)
  if [ -n "$BASE_IMAGE" ]; then
    # Offline: the builder stages are never used with --target prebuilt; pointing them at
    # the local base too keeps any tool that still resolves them from reaching a registry.
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [ "$FROM_SOURCE" = 0 ] && args+=(--build-arg "RUST_IMAGE=$BASE_IMAGE" --build-arg "PYTHON_IMAGE=$BASE_IMAGE")
  fi
  [ -n "$GPU_BASE_IMAGE" ] && args+=(--build-arg "GPU_BASE_IMAGE=$GPU_BASE_IMAGE")
  log "$TOOL: $ref ($file${args:+ ${args[*]}})"
  case "$TOOL" in
    buildah) buildah bud --layers --ignorefile "$file.dockerignore" -f "$file" -t "$ref" "${args[@]}" . ;;
    podman)  podman build --ignorefile "$file.dockerignore" -f "$file" -t "$ref" "${args[@]}" . ;;
    docker)  DOCKER_BUILDKIT=1 docker build -f "$file" -t "$ref" "${args[@]}" . ;;
    *) die "unknown tool $TOOL" ;;
  esac
}

declare -a DIGESTS=()
for img in "${todo[@]}"; do
  ref="localhost/lapseguard/$img:$TAG"
  [ -n "$REGISTRY" ] && ref="$REGISTRY/lapseguard/$img:$TAG"
  build_one "$img" "$ref"
  if [ -n "$REGISTRY" ]; then
    digestfile=$(mktemp)
    case "$TOOL" in
      buildah) buildah push --digestfile "$digestfile" "$ref" ;;
      podman)  podman push --digestfile "$digestfile" "$ref" ;;
      docker)  docker push "$ref" >&2
               docker inspect --format '{{index .RepoDigests 0}}' "$ref" | sed 's/.*@//' > "$digestfile" ;;
    esac
    DIGESTS+=("$img $ref@$(cat "$digestfile")")
    rm -f "$digestfile"
  fi
done

log "built: ${todo[*]} (tag $TAG)"
if [ ${#DIGESTS[@]} -gt 0 ]; then
  printf '\n# pushed; pin them in your overlay (kustomize images: name/newName/digest):\n'
  printf '%s\n' "${DIGESTS[@]}"
fi
