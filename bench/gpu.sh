#!/usr/bin/env bash
# Proves the worker's CUDA path on a GPU machine and measures images/s on the GPU
# beside the CPU on the same frames.
#
# Usage: [GPU_ONLY=1] bench/gpu.sh ORT_GPU_DIR WORKER_BIN MODEL [OUT_DIR]
#   ORT_GPU_DIR  folder with libonnxruntime.so.* and libonnxruntime_providers_{cuda,shared}.so
#                from `scripts/fetch-models.sh --gpu`
#   WORKER_BIN   a release build of the worker
#   MODEL        centerface-prepared.onnx
# The CUDA 13 runtime libraries (cuBLAS, cuDNN 9, cuRAND, cuFFT, NVRTC) are taken from
# the nvidia-* Python packages of the machine's python3 (the GPU image ships the same).
set -euo pipefail
ORT_DIR=$(cd "$1" && pwd)
WORKER=$(realpath "$2")
MODEL=$(realpath "$3")
OUT=${4:-/tmp/lapseguard-gpu}
mkdir -p "$OUT"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
cuda_libs=$(find "$sp/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$ORT_DIR:$cuda_libs${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH
ORT_DYLIB_PATH=$(ls "$ORT_DIR"/libonnxruntime.so.1.* | head -1)
export LAPSEGUARD_MODEL_PATH="$MODEL" LAPSEGUARD_LOG_FORMAT=pretty

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "cpu: $(nproc) cores"
python3 "$root/bench/make_frames.py" "$OUT/f1080" 1920 1080 64
python3 "$root/bench/make_frames.py" "$OUT/f4k" 3840 2160 16 12

run() { # label device set extra...
  local label=$1 dev=$2 set=$3; shift 3
  echo "== $label ($set)"
  "$@" "$WORKER" anonymize "$OUT/$set" --out "$OUT/out-$label-$set" --device "$dev" 2>&1 | tail -2
}
for set in f1080 f4k; do
  run cuda cuda "$set" env LAPSEGUARD_WORKER_DETECTORS=1
  run cuda-2sessions cuda "$set" env LAPSEGUARD_WORKER_DETECTORS=2
  [ -n "${GPU_ONLY:-}" ] || run cpu-2threads cpu "$set" taskset -c 0,1 env LAPSEGUARD_WORKER_THREADS=2
done
# Same faces found on both devices (first frames), as a consistency check.
"$WORKER" detect --device cuda "$OUT/f1080/frame_0000.jpg" "$OUT/f1080/frame_0001.jpg" > "$OUT/cuda.jsonl"
taskset -c 0,1 "$WORKER" detect --device cpu --threads 2 "$OUT/f1080/frame_0000.jpg" "$OUT/f1080/frame_0001.jpg" > "$OUT/cpu.jsonl"
python3 - "$OUT/cuda.jsonl" "$OUT/cpu.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
for x, y in zip(a, b):
    print(f"{x['path'].rsplit('/',1)[-1]}: cuda {len(x['faces'])} faces, cpu {len(y['faces'])} faces")
PY
