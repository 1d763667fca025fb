"""Evaluate a calibrated detector on an MVTec-layout folder: metrics JSON + a visual report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.artifact import atomic_write_bytes
from models.decision import decide_all, false_alarm_tail
from models.detector import Detector
from training.calibrate import score_files
from training.data import mvtec_test_set
from training.metrics import aupro, auroc, best_recall_at_far, pixel_auroc

log = logging.getLogger(__name__)


def mask_like(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """A test image's ground-truth mask (None: a good image, no defect pixel) as a bool map of `shape` (the work
    map's), area-resized; what every pixel metric here and in the benchmarks compares maps with."""
    if path is None:
        return np.zeros(shape, bool)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError(f"{path}: unreadable mask")
    return cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_AREA) > 127


def evaluate(detector: Detector, root: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (metrics, details for the report). Pixel metrics use maps at work resolution."""
    items = mvtec_test_set(root)
    by_path = {i.path: i for i in items}
    kept, scores, maps = score_files(detector.offline(), [i.path for i in items], desc="evaluate")
    skipped = sorted(str(i.path) for i in items if i.path not in set(kept))
    kinds = [by_path[p].defect for p in kept]
    labels = np.array([k != "good" for k in kinds])
    cal = detector.calibration
    flagged = decide_all(scores, cal.threshold)
    metrics: dict[str, Any] = {"n_images": len(kept), "n_skipped": len(skipped), "skipped": skipped,
                               "image_auroc": auroc(labels, scores), "threshold": cal.threshold,
                               "alpha": cal.alpha}
    with_mask = [(m, by_path[p]) for p, m in zip(kept, maps, strict=True)
                 if by_path[p].defect == "good" or by_path[p].mask is not None]
    if any(it.mask is not None for _, it in with_mask):
        gt = [mask_like(it.mask, m.shape) for m, it in with_mask]
        pix_maps = [m for m, _ in with_mask]
        metrics["pixel_auroc"], metrics["pixel_auroc_max_error"] = pixel_auroc(gt, pix_maps)
        metrics["aupro_30"] = aupro(gt, pix_maps)
    good = ~labels
    metrics["false_alarm_rate"] = float(flagged[good].mean()) if good.any() else None
    metrics["false_alarms"], metrics["n_good"] = int(flagged[good].sum()), int(good.sum())
    metrics["false_alarm_rate_90"] = cal.false_alarm_rate_90  # what the card says one model's rate stays under
    # how likely this many false alarms are if test/good is what calibration was (the guarantee's assumption)
    metrics["false_alarm_tail_p"] = false_alarm_tail(metrics["false_alarms"], metrics["n_good"],
                                                     len(cal.scores), cal.alpha) if good.any() else None
    if metrics["false_alarm_tail_p"] is not None and metrics["false_alarm_tail_p"] < 0.05:
        log.warning("%d of %d good test images flagged at alpha %g: P = %.2g if they were exchangeable with the "
                    "%d calibration images. These good images differ from the calibration images (new parts, a "
                    "changed line?): the stated false-alarm rate does not hold for them; recalibrate on good "
                    "images like them", metrics["false_alarms"], metrics["n_good"], cal.alpha,
                    metrics["false_alarm_tail_p"], len(cal.scores))
    metrics["recall"] = float(flagged[labels].mean())
    if good.any() and labels.any():  # what the labels' own best threshold catches at the card's rate and at twice it
        metrics["best_recall_at_alpha"] = best_recall_at_far(labels, scores, cal.alpha)
        metrics["best_recall_at_2alpha"] = best_recall_at_far(labels, scores, min(1.0, 2 * cal.alpha))
    tp, fp = int((flagged & labels).sum()), int((flagged & good).sum())
    precision = tp / max(tp + fp, 1)
    metrics["precision"] = precision
    metrics["f1"] = 2 * precision * metrics["recall"] / max(precision + metrics["recall"], 1e-12)
    metrics["recall_by_defect"] = {k: float(flagged[[x == k for x in kinds]].mean())
                                   for k in sorted(set(kinds) - {"good"})}
    details = {"paths": kept, "kinds": kinds, "scores": scores, "labels": labels, "maps": maps, "flagged": flagged,
               "false_alarm_tail_p": metrics["false_alarm_tail_p"]}
    return metrics, details


def write_results(metrics: dict[str, Any], details: dict[str, Any], detector: Detector, out: Path) -> None:
    from training.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    rows = ["path,defect,score,flagged"] + [
        f"{p},{k},{s:.6g},{int(f)}"
        for p, k, s, f in zip(details["paths"], details["kinds"], details["scores"], details["flagged"], strict=True)]
    atomic_write_bytes(out / "scores.csv", ("\n".join(rows) + "\n").encode())
    write_report(details, detector, out / "report.png")
