#!/usr/bin/env bash
# Worker speed: our `worker anonymize` vs deface on the same JPEG files with the same
# number of threads, at 1080p and 4K, in one run; prints images/s, the ratio and
# each tool's peak RSS.
#
# Usage: bench/worker.sh [--threads N] [--frames-1080 N] [--frames-4k N]
# Frames are composed from the repository's test portraits (bench/make_frames.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads=2 n1080=24 n4k=6
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --frames-1080) n1080=$2; shift 2 ;;
    --frames-4k) n4k=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cpus=$(seq -s, 0 $((threads - 1)))

echo "==> building the worker (release)" >&2
cargo build --release -p worker >&2
eval "$(scripts/fetch-models.sh)"
# --threads N gives our worker N cores for inference (its default layout: one
# single-threaded session per core) and deface N ONNX Runtime/OpenCV threads.
export ORT_DYLIB_PATH LAPSEGUARD_MODEL_PATH
py=$(bench/recall.sh --setup-only | tail -1)

work=$(mktemp -d "${TMPDIR:-/tmp}/lapseguard-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$py" bench/make_frames.py "$work/f1080" 1920 1080 "$n1080"
"$py" bench/make_frames.py "$work/f4k" 3840 2160 "$n4k" 12

# Prints "images_per_s peak_rss_mib" of a command run pinned to $cpus.
measure() {
  local log=$1; shift
  /usr/bin/time -f '%M' -o "$log.rss" taskset -c "$cpus" "$@" >"$log" 2>&1
  local rss=$(( $(tail -1 "$log.rss") / 1024 ))
  local ips
  ips=$(grep -oE '[0-9.]+ images/s|images_per_s=[0-9.]+' "$log" | grep -oE '[0-9.]+' | tail -1)
  echo "$ips $rss"
}

printf '\n%-6s %-10s %12s %12s %10s\n' set tool images/s peak_MiB ratio
for set in f1080 f4k; do
  # Ours warms up on a frame of the set's size, as deface_speed.py warms up on the
  # set's first file: every input shape (4K: whole frame and tiles) is prepared
  # before the clock runs, for both.
  warm=1920x1080
  [ "$set" = f4k ] && warm=3840x2160
  read -r ours_ips ours_rss < <(measure "$work/ours-$set.log" env LAPSEGUARD_DETECT_WARMUP_FRAMES=$warm target/release/worker anonymize "$work/$set" --out "$work/out-ours-$set" --threads "$threads")
  read -r def_ips def_rss < <(measure "$work/deface-$set.log" "$py" bench/deface_speed.py --threads "$threads" --no-affinity "$work/$set"/*.jpg)
  ratio=$(python3 -c "print(f'{$ours_ips / $def_ips:.2f}x')")
  printf '%-6s %-10s %12s %12s %10s\n' "$set" ours "$ours_ips" "$ours_rss" "$ratio"
  printf '%-6s %-10s %12s %12s %10s\n' "$set" deface "$def_ips" "$def_rss" ""
done
echo "(threads: $threads, pinned to CPUs $cpus; frames: $n1080 at 1080p, $n4k at 4K)"
