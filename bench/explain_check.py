"""Do explanations point at the defect, and how long do they take?

    python -m bench.explain_check --model bench/work/cmp_ours.safetensors --data ../shared/datasets/magnetic_tile

For every defective test image with a non-empty mask: is the top explained region's box
on the ground-truth defect (any mask pixel inside it), and is any explained region?
Latency of Detector.explain against plain Detector.inspect, per image, CPU.
Budget: an explanation costs at most 1 s at p95 on 2 CPU cores.
Writes bench/results/explain_check.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from bench.fit_eval import machine
from models.detector import Detector
from training.data import mvtec_test_set

ROOT = Path(__file__).resolve().parents[1]

BUDGET_P95_S = 1.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=ROOT / "bench" / "work" / "cmp_ours.safetensors")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic_tile")
    a = p.parse_args()
    det = Detector.from_artifact(a.model, "cpu")
    items = [i for i in mvtec_test_set(a.data) if i.mask is not None]
    top_hits = any_hits = n = 0
    t_explain, t_inspect, kinds = [], [], {"novel": 0, "misplaced": 0}
    for k, item in enumerate(items):
        mask = cv2.imread(str(item.mask), cv2.IMREAD_GRAYSCALE) > 127
        if not mask.any():
            continue
        image = det.read(item.path)
        t0 = time.perf_counter()
        det.inspect([image])
        t_inspect.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, regions = det.explain(image)
        t_explain.append(time.perf_counter() - t0)
        hits = [mask[y : y + h, x : x + w].any() for x, y, w, h in (r.box for r in regions)]
        top_hits += bool(hits and hits[0])
        any_hits += any(hits)
        kinds[regions[0].kind] += 1
        n += 1
        if k % 50 == 0:
            print(f"{k}/{len(items)} images, top-region hit rate so far {top_hits / max(n, 1):.3f}", flush=True)
    res = {"machine": machine(), "model": a.model.name, "dataset": str(a.data), "defect_images": n,
           "top_region_hit_rate": top_hits / n, "any_region_hit_rate": any_hits / n, "top_region_kinds": kinds,
           "explain_p50_s": float(np.percentile(t_explain, 50)), "explain_p95_s": float(np.percentile(t_explain, 95)),
           "inspect_p50_s": float(np.percentile(t_inspect, 50)), "budget_p95_s": BUDGET_P95_S,
           "within_budget": bool(np.percentile(t_explain, 95) <= BUDGET_P95_S)}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain_check.json").write_text(json.dumps(res, indent=2))
    md = (f"Explanations on `{a.data.name}` ({n} defective test images with masks); machine: {machine()}; "
          f"command: `python -m bench.explain_check --model {a.model} --data {a.data}`\n\n"
          "| top region on the defect | any region on the defect | top region kind (novel / misplaced) | "
          "explain p50 s | explain p95 s (budget 1 s) | inspect p50 s |\n|---|---|---|---|---|---|\n"
          f"| {res['top_region_hit_rate']:.3f} | {res['any_region_hit_rate']:.3f} | {kinds['novel']} / "
          f"{kinds['misplaced']} | {res['explain_p50_s']:.3f} | {res['explain_p95_s']:.3f} "
          f"({'within' if res['within_budget'] else 'OVER'}) | {res['inspect_p50_s']:.3f} |\n")
    (out / "explain_check.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
