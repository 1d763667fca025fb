"""Pixel metrics in bounded memory: the evaluation's peak before and after they went map by map.

    python -m bench.eval_memory [--model bench/work/small_train_deeppcb_seed1.safetensors] [--data deeppcb]

`sae-inspect evaluate` scores a test split and computes pixel AUROC and AUPRO over every map pixel. Computed on
all pixels at once (concatenated, sorted: how training/metrics.py did it before), deeppcb's 750 test maps at 640 px
(307 M pixels) took the whole evaluation to 22.6 GB on this 24 GB machine, and killed a benchmark process. Each
method runs in its own child process on the same model and test split: score the split (as `evaluate` does),
then the pixel metrics, exact (`exact`: every pixel at once, the reference below) or map by map
(`streaming`: ``training.metrics.pixel_auroc`` and ``aupro``). Reported: the child's peak resident memory, its
resident memory after scoring (the maps themselves), the metrics' own seconds and values. Writes
bench/results/eval_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.accuracy import DATASETS, RESULTS, WORK
from bench.fit_eval import machine

METHODS = ("exact", "streaming")


def aupro_exact(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3, steps: int = 300) -> float:
    """The MVTec AD recipe on every defect-free pixel at once: thresholds at exact quantiles of all of them."""
    normal = np.sort(np.concatenate([a[~(m > 0)] for m, a in zip(masks, maps, strict=True)]))
    regions = []
    for m, a in zip(masks, maps, strict=True):
        n, lab = cv2.connectedComponents((m > 0).astype(np.uint8), connectivity=8)
        regions += [np.sort(a[lab == i]) for i in range(1, n)]
    t = np.quantile(normal, 1 - np.linspace(0, max_fpr, steps))
    fpr = 1 - np.searchsorted(normal, t, side="right") / len(normal)
    pro = np.mean([1 - np.searchsorted(r, t, side="right") / len(r) for r in regions], axis=0)
    fpr, pro = np.r_[fpr, max_fpr], np.r_[pro, np.interp(max_fpr, fpr, pro)]
    keep = fpr <= max_fpr
    order = np.argsort(fpr[keep])
    return float(np.trapezoid(pro[keep][order], fpr[keep][order]) / max_fpr)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def child(method: str, model: Path, data: Path) -> dict:
    """One method in this process: score the test split, then the pixel metrics."""
    import torch

    from models.detector import Detector
    from training.calibrate import score_files
    from training.data import mvtec_test_set
    from training.evaluate import mask_like
    from training.metrics import aupro, auroc, pixel_auroc

    torch.set_num_threads(2)
    det = Detector.from_artifact(model, device="cpu").offline()
    items = {i.path: i for i in mvtec_test_set(data)}
    kept, _, maps = score_files(det, list(items), desc=f"{method}: scoring")
    pairs = [(m, items[p]) for p, m in zip(kept, maps, strict=True)
             if items[p].defect == "good" or items[p].mask is not None]
    gt, pix = [mask_like(it.mask, m.shape) for m, it in pairs], [m for m, _ in pairs]
    after_scoring = rss_mb()
    t0 = time.perf_counter()
    if method == "exact":
        value = auroc(np.concatenate([g.ravel() for g in gt]), np.concatenate([m.ravel() for m in pix]))
        row = {"pixel_auroc": value, "aupro_30": aupro_exact(gt, pix)}
    else:
        got = pixel_auroc(gt, pix)
        row = {"pixel_auroc": got.value, "pixel_auroc_max_error": got.max_error, "aupro_30": aupro(gt, pix)}
    return {**row, "metric_seconds": time.perf_counter() - t0, "rss_after_scoring_mb": after_scoring,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "n_maps": len(pix), "n_pixels": int(sum(m.size for m in pix))}


def table(r: dict) -> str:
    out = [f"Machine: {r['machine']}; command: `python -m bench.eval_memory --model {r['model']} --data {r['data']}`. "
           "Each method in its own child process: score the test split, then its pixel metrics. One run.", "",
           "| pixel metrics | maps | pixels | resident after scoring, MB | peak resident, MB | metrics s | pixel AUROC "
           "| AUPRO@30% |", "|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        x = r["rows"][m]
        bound = f" (+- {x['pixel_auroc_max_error']:.1e})" if "pixel_auroc_max_error" in x else ""
        out.append(f"| {m} | {x['n_maps']} | {x['n_pixels'] / 1e6:.0f} M | {x['rss_after_scoring_mb']:.0f} | "
                   f"{x['peak_rss_mb']:.0f} | {x['metric_seconds']:.1f} | {x['pixel_auroc']:.5f}{bound} | "
                   f"{x['aupro_30']:.5f} |")
    e, s = r["rows"]["exact"], r["rows"]["streaming"]
    out += ["", f"Peak, streaming / exact: {s['peak_rss_mb'] / e['peak_rss_mb']:.2f}; differences: pixel AUROC "
            f"{s['pixel_auroc'] - e['pixel_auroc']:+.1e}, AUPRO {s['aupro_30'] - e['aupro_30']:+.1e}."]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=WORK / "small_train_deeppcb_seed1.safetensors")
    p.add_argument("--data", default="deeppcb", help="a shared set's name")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.model, DATASETS / a.data)))
        return
    rows = {}
    for method in METHODS:  # one at a time: two torch processes would share the 2 cores
        done = subprocess.run([sys.executable, "-m", "bench.eval_memory", "--model", str(a.model), "--data", a.data,
                               "--child", method], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{method}: the child failed ({done.returncode}): {done.stderr[-2000:]}")
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(method, rows[method], flush=True)
    result = {"machine": machine(), "model": os.path.relpath(a.model), "data": a.data, "rows": rows}
    (RESULTS / "eval_memory.json").write_text(json.dumps(result, indent=2))
    md = table(result)
    (RESULTS / "eval_memory.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
