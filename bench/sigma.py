"""The anomaly map's Gaussian smoothing, swept on each shared set's default model.

The map is the patch scores upsampled to the canvas and smoothed by a Gaussian of `ScoringConfig.sigma` = 4 canvas
pixels, the value PaDiM and PatchCore use at 224-256 px; since then the default canvas grew to 640 px on three of
the four shared sets, where 4 px is half a feature cell (8 px) and 2.5 x less of the part than at 256 px. It
was never swept. Here each set's default model (bench/work/accuracy_{set}.safetensors, as `python -m bench.accuracy`
fits it; fitted when missing, bench.top_fraction's `model_for`) scores its calibration split and the full test split
once: one backbone and SAE pass per image, the patch scores turned into a map for every sigma in SIGMAS (the map
operator is linear, `models.scoring.map_operator`). Per sigma: image AUROC, pixel AUROC and AUPRO@30 % on the same
test maps, and recall and false alarms on test/good at the split-conformal threshold recalibrated on the same
calibration images at the card's alpha. The scoring normalisation stays the one the fit chose (with 4 px).

Two more rows erode the patch scores before the map (a k x k minimum over the feature grid, k = 3, 5; sigma 4 px):
each patch feature averages its 3 x 3 neighbourhood (`ScoringConfig.pool`), so a defect raises the error of every
cell whose window holds it; if that halo is what costs AUPRO, the minimum over the same window takes it back off.
Not a product mode: measured here only.

    python -m bench.sigma       # ~13 min on 2 cores with the models fitted; writes bench/results/sigma.{json,md,png}
"""

from __future__ import annotations

import time

import numpy as np

from bench.accuracy import DATASETS, RESULTS
from bench.fit_eval import machine
from bench.top_fraction import model_for, per_set, sweep_plot
from models.config import ScoringConfig

SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_SIGMA = ScoringConfig().sigma
ERODES = (3, 5)
MAPS = [(1, s) for s in SIGMAS] + [(k, DEFAULT_SIGMA) for k in ERODES]
"""(erosion window, sigma) of each row; 1: no erosion."""
OUT = RESULTS / "sigma"


def sigma_maps(det):
    """-> a canvas function for ``Detector.maps``: (N, S, S, 3) canvases -> (N, S, S, len(MAPS)) maps, one
    pass of the backbone and the SAE."""
    import torch
    import torch.nn.functional as F

    from models.features import to_device
    from models.net import patch_score
    from models.scoring import apply_map_operator, map_operator

    ops = [map_operator(det.grid.cells, det.config.preprocess.size, s, str(det.device)) for _, s in MAPS]

    def eroded(scores: torch.Tensor, k: int) -> torch.Tensor:
        return scores if k == 1 else -F.max_pool2d(-scores[:, None], k, 1, k // 2)[:, 0]

    def canvas_maps(canvases: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            _, err, values, indices = det.net(to_device(canvases, det.device))
            scores = patch_score(err, values, indices, det.config.scoring.normalize, det.net.stats)
            maps = [apply_map_operator(op, eroded(scores, k)) for (k, _), op in zip(MAPS, ops, strict=True)]
            return torch.stack(maps, -1).cpu().numpy()

    return canvas_maps


def work_maps(det, paths: list, keep: set) -> tuple[list, np.ndarray, dict]:
    """Image files -> (paths that decoded, (n, len(MAPS)) image scores, {path: (h, w, len(MAPS)) work map} for
    the paths in `keep`)."""
    from training.data import iter_images

    fn = sigma_maps(det)
    kept, scores, maps, pending = [], [], {}, []

    def flush() -> None:
        for (p, _), (m, _) in zip(pending, det.maps([img for _, img in pending], fn), strict=True):
            kept.append(p)
            scores.append([det.score_map(m[..., j]) for j in range(len(MAPS))])
            if p in keep:
                maps[p] = m
        pending.clear()

    for p, img in iter_images(paths, det.config.preprocess):
        if img is not None:
            pending.append((p, img))
        if len(pending) >= 8:
            flush()
    if pending:
        flush()
    return kept, np.asarray(scores, np.float64), maps


def measure(name: str) -> dict:
    from models.decision import conformal_threshold, decide_all
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images, mvtec_test_set
    from training.evaluate import mask_like
    from training.metrics import aupro, auroc, pixel_auroc

    t0 = time.perf_counter()
    det = model_for(name).offline()
    _, cal, _ = work_maps(det, split_images(good_images([DATASETS / name]), CalibrationConfig()).calibrate, set())
    items = mvtec_test_set(DATASETS / name)
    item = {i.path: i for i in items}
    masked = {i.path for i in items if i.defect == "good" or i.mask is not None}
    kept, test, maps = work_maps(det, [i.path for i in items], masked if any(i.mask for i in items) else set())
    labels = np.array([item[p].defect != "good" for p in kept])
    with_maps = [p for p in kept if p in maps]
    gt = [mask_like(item[p].mask, maps[p].shape[:2]) for p in with_maps]  # read once, for every sigma
    alpha = det.calibration.alpha
    rows = []
    for j, (erode, sigma) in enumerate(MAPS):
        flagged = decide_all(test[:, j], conformal_threshold(np.sort(cal[:, j]), alpha))
        row = {"sigma": sigma, "erode": erode, "image_auroc": auroc(labels, test[:, j]),
               "recall": float(flagged[labels].mean()), "false_alarm_rate": float(flagged[~labels].mean())}
        if with_maps:
            pix = [maps[p][..., j] for p in with_maps]
            row["pixel_auroc"] = pixel_auroc(gt, pix)[0]
            row["aupro_30"] = aupro(gt, pix)
        rows.append(row)
    return {"dataset": name, "canvas": det.config.preprocess.size, "normalize": det.config.scoring.normalize,
            "alpha": alpha, "n_calibration": len(cal), "rows": rows, "seconds": time.perf_counter() - t0}


def table(results: list[dict]) -> str:
    out = [f"Machine: {machine()}; command: `python -m bench.sigma`; each set's default model "
           "(bench/work/accuracy_{set}.safetensors), its calibration split and full test split scored once, the "
           "patch scores smoothed at every sigma (canvas pixels); every sigma's threshold recalibrated on the same "
           "calibration images at the card's alpha; normalisation as the fit chose it (with 4 px).", "",
           "| sigma | " + " | ".join(f"{r['dataset']} ({r['canvas']} px)" for r in results)
           + " | mean image AUROC | mean AUPRO@30% | mean recall at alpha | mean false alarms on test/good |",
           "|---|" + "---|" * (len(results) + 4)]
    for j, (erode, sigma) in enumerate(MAPS):
        cells = [r["rows"][j] for r in results]
        masked = [c for c in cells if "aupro_30" in c]
        name = f"{sigma:g} px" if erode == 1 else f"{sigma:g} px, patch scores eroded {erode} x {erode}"
        out.append(f"| {name}{' (default)' if (erode, sigma) == (1, DEFAULT_SIGMA) else ''} | "
                   + " | ".join(f"{c['image_auroc']:.3f} / {c.get('aupro_30', float('nan')):.3f} / "
                                f"{c['recall']:.3f} / {c['false_alarm_rate']:.3f}" for c in cells)
                   + f" | {np.mean([c['image_auroc'] for c in cells]):.3f}"
                   + f" | {np.mean([c['aupro_30'] for c in masked]):.3f}"
                   + "".join(f" | {np.mean([c[k] for c in cells]):.3f}" for k in ("recall", "false_alarm_rate"))
                   + " |")
    out += ["", "Cells: image AUROC / AUPRO@30% / recall at alpha / false alarms on test/good (AUPRO: nan where the "
            "set has no masks). Per set: normalisation, alpha, calibration images: "
            + "; ".join(f"{r['dataset']} {r['normalize']}, {r['alpha']:.4g}, {r['n_calibration']}" for r in results)
            + ".", "", f"![image AUROC and AUPRO by sigma]({OUT.name}.png)", ""]
    return "\n".join(out)


def main() -> None:
    results = per_set(OUT.with_suffix(".json"), measure,
                      lambda r: [(c.get("erode", 1), c["sigma"]) for c in r["rows"]] == MAPS)
    text = table(results)
    OUT.with_suffix(".md").write_text(text)
    sweep_plot(OUT.with_suffix(".png"),
               [(f"{r['dataset']} ({r['canvas']} px)", list(SIGMAS),
                 [[c["image_auroc"] for c in r["rows"][:len(SIGMAS)]],
                  [c["aupro_30"] for c in r["rows"][:len(SIGMAS)] if "aupro_30" in c]])
                for r in results],
               ("image AUROC", "AUPRO@30%"), "map smoothing sigma, canvas px (dotted: the default)", DEFAULT_SIGMA,
               "symlog", base=2, linthresh=1)
    print(text)


if __name__ == "__main__":
    main()
