"""One SAE Inspect row of bench/anomalib_compare.py, run in its own process.

Fits on (a fraction of) train/good, evaluates on the full test split with the shared
metric code (training/metrics.py), measures forward throughput on 256 px canvases at
batch 1 and 16, and prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from models.config import ModelConfig, PreprocessConfig
from models.preprocess import make_canvases
from training.data import good_images
from training.evaluate import evaluate
from training.pipeline import fit_calibrated

ROOT = Path(__file__).resolve().parents[1]


def throughput(fn, batches: list, seconds: float = 15.0) -> float:
    fn(batches[0])
    n, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        b = batches[i % len(batches)]
        fn(b)
        n += len(b)
        i += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--train", type=Path, help="folder of good training images (default data/train/good)")
    p.add_argument("--mode", default="letterbox")
    p.add_argument("--margin", type=int, default=PreprocessConfig.margin)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-eval", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    config = ModelConfig(preprocess=PreprocessConfig(mode=a.mode, margin=a.margin))
    paths = good_images([a.train or a.data])
    t0 = time.perf_counter()
    det = fit_calibrated(paths, config, device="cpu", provenance={"version": "bench"})
    fit_s = time.perf_counter() - t0
    det.save(a.out)
    row = {"fit_seconds": fit_s, "n_train_images": len(paths), "model_bytes": a.out.stat().st_size}
    if not a.no_eval:
        metrics, _ = evaluate(det, a.data)
        row |= {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro_30", "false_alarm_rate")}
        test = sorted((a.data / "test").rglob("*.jpg")) + sorted((a.data / "test").rglob("*.png"))
        canv = np.concatenate([make_canvases(det.read(q), config.preprocess)[0] for q in test[:64]])
        for bs in (1, 16):
            batches = [canv[i : i + bs] for i in range(0, len(canv) - bs + 1, bs)]
            row[f"images_per_s_batch{bs}"] = throughput(det.canvas_maps, batches)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
