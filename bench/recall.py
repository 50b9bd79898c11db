#!/usr/bin/env python3
"""Face-detection recall on a labelled eval set: deface (CenterFace) vs ours.

Run through bench/recall.sh, which provides a venv with the pinned packages.

Eval set layout (e.g. ../shared/evalsets/wider-val-dev): manifest.json with
per image `image`, `orig_width`, `orig_height` and `faces` [{x, y, w, h,
invalid, in_sets, ...}] in original coordinates; images squashed to another
size by their publisher. Each image is resized back to orig_width x
orig_height into a temporary directory (outside the repository, deleted at
the end) and both detectors read those files.

deface: boxes from deface.centerface.CenterFace, constructed and called as
deface's CLI does by default (in_shape=None: the full image size rounded up to
multiples of 32, backend 'auto' = ONNX Runtime, image read with imageio as RGB).

ours: `--ours-cmd` is run once for all images; `{thresh}` is replaced by the
threshold and the token `{files...}` by the image paths (appended when absent).
It must print one JSON object per image and line:
  {"path": "...", "width": W, "height": H,
   "faces": [{"x": .., "y": .., "w": .., "h": .., "score": ..}, ...]}
If it is missing or fails, a message is printed and deface's figures are still
reported (exit status 0 unless --require-ours).

Metrics per tool: recall at IoU >= --iou (default 0.5) over faces not flagged
invalid, with greedy one-to-one matching (detections in descending score
order, each takes the still-unmatched ground-truth face with the highest IoU);
overall, per WIDER difficulty set (face's `in_sets`), per face-height bucket
(>=16, >=32, >=64, <16 px); false boxes per image = detections matched to no
face (a detection matched to an invalid face is ignored, not false); mean
seconds per image (wall time of the whole run incl. model load, / images).
"""

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OURS_CMD = "target/release/worker detect --threshold {thresh} --json {files...}"
SETS = ("easy", "medium", "hard")
HEIGHT_BUCKETS = (  # (label, predicate on ground-truth face height in px)
    ("h>=16", lambda h: h >= 16),
    ("h>=32", lambda h: h >= 32),
    ("h>=64", lambda h: h >= 64),
    ("h<16", lambda h: h < 16),
)


def log(msg):
    print(f"[recall] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- data ----

def load_manifest(evalset, limit):
    path = os.path.join(evalset, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    images = manifest["images"]
    if limit:
        images = images[:limit]
    return images


def restore_images(evalset, images, outdir, interp, quality):
    """Resize each stored image back to its original size; return paths."""
    import cv2

    flags = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
             "lanczos": cv2.INTER_LANCZOS4}[interp]
    paths = []
    for rec in images:
        src = os.path.join(evalset, rec["image"])
        img = cv2.imread(src, cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {src}")
        size = (int(rec["orig_width"]), int(rec["orig_height"]))
        if (img.shape[1], img.shape[0]) != size:
            img = cv2.resize(img, size, interpolation=flags)
        dst = os.path.join(outdir, os.path.basename(rec["image"]))
        root, ext = os.path.splitext(dst)
        if ext.lower() not in (".jpg", ".jpeg"):
            dst = root + ".jpg"
        if not cv2.imwrite(dst, img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise SystemExit(f"cannot write {dst}")
        paths.append(dst)
    return paths


# ------------------------------------------------------------ detectors ----

def run_deface(paths, thresh):
    """Per image: list of (x, y, w, h, score) from deface's CenterFace."""
    import imageio.v2 as iio
    from deface.centerface import CenterFace

    t0 = time.perf_counter()
    # deface prints "Running on <provider>." on stdout; keep stdout clean.
    with contextlib.redirect_stdout(sys.stderr):
        centerface = CenterFace(in_shape=None, backend="auto")
    if centerface.backend != "onnxrt":
        log(f"WARNING: deface uses backend {centerface.backend!r}, not ONNX Runtime")
    t_init = time.perf_counter() - t0
    results = []
    for p in paths:
        frame = iio.imread(p)  # RGB, as deface's image_detect()
        dets, _ = centerface(frame, threshold=thresh)
        results.append([(float(d[0]), float(d[1]), float(d[2] - d[0]),
                         float(d[3] - d[1]), float(d[4])) for d in dets])
    wall = time.perf_counter() - t0
    return results, {"wall_s": wall, "init_s": t_init,
                     "backend": centerface.backend,
                     "providers": getattr(getattr(centerface, "sess", None),
                                          "get_providers", lambda: [])()}


class OursError(Exception):
    pass


def build_ours_argv(template, thresh, paths):
    argv = []
    have_files = False
    for tok in shlex.split(template):
        if tok == "{files...}":
            argv.extend(paths)
            have_files = True
        else:
            argv.append(tok.replace("{thresh}", f"{thresh:g}"))
    if not have_files:
        argv.extend(paths)
    return argv


def run_ours(template, thresh, paths, timeout):
    argv = build_ours_argv(template, thresh, paths)
    shown = shlex.join(argv[:8]) + (" ..." if len(argv) > 8 else "")
    log(f"ours: {shown}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=timeout)
    except FileNotFoundError:
        raise OursError(f"command not found: {argv[0]!r} (build the worker with "
                        f"`cargo build --release -p worker`, or pass --ours-cmd / --no-ours)")
    except PermissionError as e:
        raise OursError(f"cannot execute {argv[0]!r}: {e}")
    except subprocess.TimeoutExpired:
        raise OursError(f"timed out after {timeout} s")
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise OursError(f"exited with status {proc.returncode}")

    by_real = {os.path.realpath(p): i for i, p in enumerate(paths)}
    by_base = {os.path.basename(p): i for i, p in enumerate(paths)}
    results = [None] * len(paths)
    sizes = [None] * len(paths)
    bad = 0
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(obj, dict) or "path" not in obj:
            bad += 1
            continue
        p = str(obj["path"])
        i = by_real.get(os.path.realpath(os.path.join(ROOT, p)))
        if i is None:
            i = by_base.get(os.path.basename(p))
        if i is None:
            bad += 1
            continue
        faces = []
        for f in obj.get("faces") or []:
            faces.append((float(f["x"]), float(f["y"]), float(f["w"]),
                          float(f["h"]), float(f.get("score", 1.0))))
        results[i] = faces
        sizes[i] = (obj.get("width"), obj.get("height"))
    missing = [os.path.basename(paths[i]) for i, r in enumerate(results) if r is None]
    if bad:
        log(f"ours: ignored {bad} unparseable/unknown output line(s)")
    if missing:
        raise OursError(f"no result for {len(missing)} of {len(paths)} images "
                        f"(first: {', '.join(missing[:3])})")
    return results, {"wall_s": wall, "sizes": sizes}


# -------------------------------------------------------------- metrics ----

def iou(a, b):
    ax2, ay2 = a[0] + a[2], a[1] + a[3]
    bx2, by2 = b[0] + b[2], b[1] + b[3]
    iw = min(ax2, bx2) - max(a[0], b[0])
    ih = min(ay2, by2) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match_image(faces, dets, iou_thr):
    """Greedy one-to-one matching. Returns (matched flags per face, n_false)."""
    matched = [False] * len(faces)
    n_false = 0
    for d in sorted(dets, key=lambda d: -d[4]):
        best, best_iou = -1, iou_thr
        for j, f in enumerate(faces):
            if matched[j]:
                continue
            v = iou(d, (f["x"], f["y"], f["w"], f["h"]))
            if v >= best_iou:
                best, best_iou = j, v
        if best < 0:
            n_false += 1
        else:
            matched[best] = True  # an invalid face absorbs the detection: ignored
    return matched, n_false


def evaluate(images, results, iou_thr):
    groups = {"overall": [0, 0]}
    for s in SETS:
        groups[s] = [0, 0]
    for label, _ in HEIGHT_BUCKETS:
        groups[label] = [0, 0]
    n_false = n_dets = 0
    for rec, dets in zip(images, results):
        faces = rec["faces"]
        matched, nf = match_image(faces, dets, iou_thr)
        n_false += nf
        n_dets += len(dets)
        for f, m in zip(faces, matched):
            if f.get("invalid"):
                continue
            keys = ["overall"] + [s for s in SETS if s in (f.get("in_sets") or [])]
            keys += [label for label, pred in HEIGHT_BUCKETS if pred(f["h"])]
            for k in keys:
                groups[k][0] += int(m)
                groups[k][1] += 1
    n = len(images)
    out = {"recall": {k: (hit / tot if tot else None) for k, (hit, tot) in groups.items()},
           "faces": {k: tot for k, (hit, tot) in groups.items()},
           "matched": {k: hit for k, (hit, tot) in groups.items()},
           "false_per_image": n_false / n if n else None,
           "detections_per_image": n_dets / n if n else None,
           "false_total": n_false, "detections_total": n_dets}
    return out


# --------------------------------------------------------------- output ----

def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def print_table(tools, evals, n_images, faces):
    names = list(tools)
    rows = [("recall overall", "overall")] + [(f"recall {s}", s) for s in SETS] + \
           [(f"recall {label}", label) for label, _ in HEIGHT_BUCKETS]
    w0 = 26
    head = f"{'metric':<{w0}}" + "".join(f"{n:>12}" for n in names)
    print(head)
    print("-" * len(head))
    for title, key in rows:
        label = f"{title} (n={faces[key]})"
        print(f"{label:<{w0}}" + "".join(
            f"{fmt(evals[n]['recall'][key] if evals.get(n) else None, '.3f'):>12}" for n in names))
    for title, key, spec in (("false boxes / image", "false_per_image", ".2f"),
                             ("detections / image", "detections_per_image", ".2f")):
        print(f"{title:<{w0}}" + "".join(
            f"{fmt(evals[n][key] if evals.get(n) else None, spec):>12}" for n in names))
    print(f"{'mean s / image':<{w0}}" + "".join(
        f"{fmt(tools[n].get('s_per_image'), '.3f'):>12}" for n in names))
    print(f"({n_images} images)")


def main():
    ap = argparse.ArgumentParser(
        description="Face-detection recall: deface (CenterFace) vs our worker.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("evalset", nargs="?",
                    default=os.path.join(ROOT, "..", "shared", "evalsets", "wider-val-dev"))
    ap.add_argument("--thresh", type=float, default=0.2,
                    help="detection threshold for both tools (default 0.2, deface's default)")
    ap.add_argument("--iou", type=float, default=0.5, help="IoU for a match (default 0.5)")
    ap.add_argument("--ours-cmd", default=DEFAULT_OURS_CMD,
                    help=f"our detector command (default: {DEFAULT_OURS_CMD!r}); run in the repo root")
    ap.add_argument("--no-ours", action="store_true", help="run deface only")
    ap.add_argument("--no-deface", action="store_true", help="run ours only")
    ap.add_argument("--require-ours", action="store_true",
                    help="exit with status 2 if our detector fails")
    ap.add_argument("--ours-timeout", type=float, default=3600.0)
    ap.add_argument("--json", metavar="OUT", help="write the numbers to OUT as JSON")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--interp", choices=("linear", "cubic", "lanczos"), default="linear",
                    help="interpolation used to restore the original size (default linear, as cv2.resize; matches the README reference)")
    ap.add_argument("--jpeg-quality", type=int, default=95,
                    help="JPEG quality of the restored images (default 95)")
    ap.add_argument("--keep-tmp", metavar="DIR",
                    help="write the restored images to DIR and keep them (never inside the repo)")
    args = ap.parse_args()

    evalset = os.path.abspath(args.evalset)
    if not os.path.isfile(os.path.join(evalset, "manifest.json")):
        raise SystemExit(f"no manifest.json in {evalset}")
    images = load_manifest(evalset, args.limit)

    if args.keep_tmp:
        tmp = os.path.abspath(args.keep_tmp)
        if tmp == ROOT or tmp.startswith(ROOT + os.sep):
            raise SystemExit("--keep-tmp must be outside the repository (eval images are not to be copied into it)")
        os.makedirs(tmp, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="lapseguard-recall-")
    try:
        log(f"restoring {len(images)} images to original size in {tmp}")
        paths = restore_images(evalset, images, tmp, args.interp, args.jpeg_quality)

        tools, evals, errors = {}, {}, {}
        if not args.no_deface:
            log(f"deface: detecting at threshold {args.thresh:g}")
            res, info = run_deface(paths, args.thresh)
            tools["deface"] = {"s_per_image": info["wall_s"] / len(paths), **info}
            evals["deface"] = evaluate(images, res, args.iou)
        if not args.no_ours:
            try:
                res, info = run_ours(args.ours_cmd, args.thresh, paths, args.ours_timeout)
                for rec, (w, h) in zip(images, info.pop("sizes")):
                    if (w, h) != (rec["orig_width"], rec["orig_height"]) and w is not None:
                        log(f"WARNING: ours reports {w}x{h} for {rec['image']}, "
                            f"expected {rec['orig_width']}x{rec['orig_height']}")
                        break
                tools["ours"] = {"s_per_image": info["wall_s"] / len(paths), **info}
                evals["ours"] = evaluate(images, res, args.iou)
            except OursError as e:
                msg = f"our detector failed: {e}"
                print(f"\n*** {msg}; reporting deface only ***\n", file=sys.stderr, flush=True)
                errors["ours"] = str(e)
                tools["ours"] = {"s_per_image": None}
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    faces = evaluate(images, [[] for _ in images], args.iou)["faces"]
    print(f"eval set: {evalset}  threshold: {args.thresh:g}  IoU >= {args.iou:g}")
    print_table(tools, evals, len(images), faces)
    if errors:
        for k, v in errors.items():
            print(f"{k}: n/a ({v})")

    if args.json:
        out = {"evalset": evalset, "n_images": len(images), "thresh": args.thresh,
               "iou": args.iou, "interp": args.interp, "faces": faces, "tools": {}}
        for name, t in tools.items():
            entry = {k: v for k, v in t.items()}
            if name in evals:
                entry.update(evals[name])
            if name in errors:
                entry["error"] = errors[name]
            out["tools"][name] = entry
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        log(f"wrote {args.json}")

    if args.require_ours and "ours" in errors:
        sys.exit(2)


if __name__ == "__main__":
    main()
