#!/usr/bin/env python3
"""Compose deterministic timelapse-like frames with faces for speed benchmarks.

Usage: make_frames.py OUT_DIR WIDTH HEIGHT COUNT [FACES_PER_FRAME]

Face crops come from the repository's testdata (public-domain portraits), pasted at
varying sizes onto a textured background, so every frame has real faces to find and
blur. Needs numpy and OpenCV (the bench venv has both).
"""
import os
import sys

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROPS = [
    ("astronaut.png", (160, 35, 130, 165)),
    ("grace-hopper.jpg", (150, 90, 225, 255)),
    ("cameraman.png", (180, 95, 100, 125)),
]


def main():
    out, w, h, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    faces = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    os.makedirs(out, exist_ok=True)
    crops = []
    for name, (x, y, cw, ch) in CROPS:
        img = cv2.imread(os.path.join(ROOT, "testdata", name), cv2.IMREAD_COLOR)
        crops.append(img[y : y + ch, x : x + cw])
    rng = np.random.default_rng(42)
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        base = (80 + 60 * np.sin(xx / 97.0 + i) * np.cos(yy / 131.0)).astype(np.int16)
        noise = rng.integers(0, 24, size=(h, w, 3), dtype=np.int16)
        frame = np.clip(base[..., None] + noise + np.array([10, 30, 0]), 0, 255).astype(np.uint8)
        for k in range(faces):
            c = crops[(i + k) % len(crops)]
            fh = int(rng.integers(max(24, h // 60), max(48, h // 6)))
            fw = int(c.shape[1] * fh / c.shape[0])
            x = int(rng.integers(0, w - fw))
            y = int(rng.integers(0, h - fh))
            frame[y : y + fh, x : x + fw] = cv2.resize(c, (fw, fh), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(out, f"frame_{i:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])


if __name__ == "__main__":
    main()
