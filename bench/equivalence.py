"""The lean scoring path against its definition, image by image, on every shared category.

    python -m bench.equivalence

For each category in ../shared/datasets with a fitted model in bench/work (made by
`python -m bench.accuracy`), every test image goes through Detector.maps (k active latents,
sparse decode, the folded map operator) and through the reference computation written out
here from the definitions (dense SAE codes and decode, dense novelty, bilinear upsampling then a
2-D Gaussian blur). Reports the largest map and score differences (relative to the threshold)
and the image AUROC of both. Writes bench/results/equivalence.{json,md}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bench.fit_eval import machine
from models.detector import Detector
from models.features import scored_error
from models.preprocess import make_canvases, stitch
from models.scoring import normalize_positions, reference_maps
from training.data import mvtec_test_set
from training.metrics import auroc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"


@torch.inference_mode()
def reference_canvas_maps(det: Detector, canvases: np.ndarray) -> np.ndarray:
    f = det.features(canvases)
    z, _ = det.sae.encode(f.flatten(0, 2))
    err = scored_error(f, det.sae.decode(z).view_as(f), det.config.scoring.error)
    z = z.view(*f.shape[:3], -1)
    s, stats = det.config.scoring, det.score_stats
    score = err
    if s.normalize != "none":
        score = normalize_positions(err, stats.err_mean, stats.err_std)
    if s.normalize == "position_novelty":
        novelty = (z * stats.rarity).sum(-1) / z.sum(-1).clamp_min(1e-6)
        score = score + normalize_positions(novelty, stats.nov_mean, stats.nov_std)
    return reference_maps(score, det.config.preprocess.size, s.sigma).cpu().numpy()


def main() -> None:
    rows = {}
    for data in sorted(p for p in DATA.iterdir() if (p / "test").is_dir()):
        model = ROOT / "bench" / "work" / f"accuracy_{data.name}.safetensors"
        if not model.is_file():
            print(f"{data.name}: no model at {model}; run python -m bench.accuracy first")
            continue
        det = Detector.from_artifact(model, "cpu")
        items = mvtec_test_set(data)
        lean, ref, labels, map_diff = [], [], [], 0.0
        for i in range(0, len(items), 16):
            pics = [det.read(it.path) for it in items[i : i + 16]]
            for pic, (work, layout), it in zip(pics, det.maps(pics), items[i : i + 16], strict=True):
                canv, _ = make_canvases(pic, det.config.preprocess)
                rmap = stitch(reference_canvas_maps(det, canv), layout)
                map_diff = max(map_diff, float(np.abs(rmap - work).max()))
                lean.append(det.score_map(work))
                ref.append(det.score_map(rmap))
                labels.append(it.defect != "good")
        lean_a, ref_a, y = np.array(lean), np.array(ref), np.array(labels)
        thr = det.calibration.threshold
        rows[data.name] = {"images": len(y), "max_map_abs_diff": map_diff,
                           "max_score_diff_over_threshold": float(np.abs(lean_a - ref_a).max() / thr),
                           "verdicts_changed": int(((lean_a > thr) != (ref_a > thr)).sum()),
                           "auroc_lean": auroc(y, lean_a), "auroc_reference": auroc(y, ref_a)}
        print(data.name, rows[data.name], flush=True)
    out = ROOT / "bench" / "results"
    (out / "equivalence.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"Machine: {machine()}; command: `python -m bench.equivalence`; every test image of each category", "",
             "| dataset | images | max map difference | max score difference / threshold | verdicts changed | "
             "image AUROC lean | image AUROC reference |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['images']} | {r['max_map_abs_diff']:.1e} | "
                     f"{r['max_score_diff_over_threshold']:.1e} | {r['verdicts_changed']} | {r['auroc_lean']:.4f} | "
                     f"{r['auroc_reference']:.4f} |")
    (out / "equivalence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
