#!/usr/bin/env bash
# See it work without any server: fetch the model, build the worker, anonymize the
# sample photos (or the folders/files given) into target/demo/.
#
# Usage: scripts/demo.sh [IMAGE_OR_FOLDER ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
echo "==> fetching the face model and ONNX Runtime (first run only)" >&2
eval "$(scripts/fetch-models.sh)"
export ORT_DYLIB_PATH LAPSEGUARD_MODEL_PATH
echo "==> building the worker" >&2
cargo build --release -p worker >&2
inputs=("$@")
[ ${#inputs[@]} -gt 0 ] || inputs=(testdata)
target/release/worker anonymize "${inputs[@]}" --out target/demo
echo "anonymized images: $root/target/demo" >&2
