#!/usr/bin/env bash
# Timelapse rendering: peak memory against frame count, side by side in one run.
# Seeds N anonymized 1280x720 frames into an embedded store (SQLite + local folder),
# renders them at 24 fps with the real renderer and ffmpeg, and prints the peak RSS of
# the renderer and of ffmpeg for 200 and for 2000 frames (override: bench/timelapse.sh 200 2000).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
small=${1:-200}
large=${2:-2000}
command -v ffmpeg >/dev/null || { echo "ffmpeg is required (Debian package ffmpeg)" >&2; exit 1; }
cargo build --release -q -p renderer --example render_rss
bin=target/release/examples/render_rss
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in "$small" "$large"; do
  echo "==> seeding $n frames" >&2
  "$bin" seed "$work/$n" "$n"
  echo "==> rendering $n frames" >&2
  "$bin" render "$work/$n" | tee "$work/$n.out"
done
python3 - "$work/$small.out" "$work/$large.out" <<'PY'
import re, sys
def read(p):
    return dict(re.findall(r"(\w+)=([\d.]+)", open(p).read()))
a, b = read(sys.argv[1]), read(sys.argv[2])
print("| frames | seconds | frames/s | renderer peak RSS MiB | ffmpeg peak RSS MiB |")
print("|---|---|---|---|---|")
for r in (a, b):
    print(f"| {r['frames']} | {r['seconds']} | {r['fps']} | {r['renderer_peak_rss_mib']} | {r['ffmpeg_peak_rss_mib']} |")
for k in ("renderer_peak_rss_mib", "ffmpeg_peak_rss_mib"):
    print(f"{k}: {b['frames']} frames / {a['frames']} frames = {float(b[k]) / float(a[k]):.2f}x")
PY
