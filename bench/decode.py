"""What decoding an upload costs, Pillow against OpenCV, on the PNGs of bench/cost.py.

    python -m bench.decode

`models.imageio.decode_image` hands plain 8-bit gray and RGB PNGs to OpenCV (``_opencv_png``) and every
other file to Pillow. For each image shape of bench/cost.py (a 256 px part, a 900 x 900 part, a 4096 x 256
strip; generated parts saved as PNG), each round times `decode_image` with the model's preprocessing on
the eight images of that shape once with OpenCV allowed and once with it switched off (Pillow alone), one
after the other; the median over rounds is reported as ms per image and their ratio, and every image is
checked to decode to the same pixels both ways. One process, one thread (a request's decode runs on one
core). Writes bench/results/decode.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

import models.imageio as imageio
from bench.cost import SIZES, images_of
from bench.fit_eval import machine
from models.config import PreprocessConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"


def ms_per_image(blobs: list[bytes], cfg: PreprocessConfig, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in blobs:
            imageio.decode_image(b, cfg)
        n += len(blobs)
    return (time.perf_counter() - t0) / n * 1e3


def pillow_only(fn, *args):
    """`fn(*args)` with the OpenCV path switched off."""
    keep = imageio._opencv_png
    imageio._opencv_png = lambda *_: False
    try:
        return fn(*args)
    finally:
        imageio._opencv_png = keep


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0)
    a = p.parse_args()
    cv2.setNumThreads(1)
    cfg = PreprocessConfig()
    rows = []
    for name, hw in SIZES.items():
        blobs = images_of(hw)
        for b in blobs:
            same = np.array_equal(imageio.decode_image(b, cfg).pixels, pillow_only(imageio.decode_image, b, cfg).pixels)
            if not same:
                raise SystemExit(f"{name}: OpenCV and Pillow decode to different pixels")
        fast, slow = [], []
        for _ in range(a.rounds):
            fast.append(ms_per_image(blobs, cfg, a.seconds))
            slow.append(pillow_only(ms_per_image, blobs, cfg, a.seconds))
        f, s = statistics.median(fast), statistics.median(slow)
        rows.append({"image": name, "hw": list(hw), "opencv_ms": f, "pillow_ms": s, "ratio": f / s,
                     "identical_pixels": True})
        print(rows[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decode.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"Machine: {machine()}; command: `python -m bench.decode`; one thread; median of {a.rounds} "
             f"interleaved rounds of {a.seconds:g} s per cell; `decode_image` with the default preprocessing on the "
             "eight PNGs per shape of bench/cost.py (pixels identical both ways, checked per image).", "",
             "| image | OpenCV ms/image (default) | Pillow ms/image | OpenCV / Pillow |", "|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['opencv_ms']:.2f} | {r['pillow_ms']:.2f} | {r['ratio']:.2f} |" for r in rows]
    (OUT / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
