"""Decision thresholds from held-out good images (split-conformal) and labelled-defect reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.detector import Calibration, Detector
from models.scoring import conformal_rank, conformal_threshold
from training.fit import iter_images

log = logging.getLogger(__name__)
MAX_PIXEL_SAMPLE = 2_000_000


def score_files(detector: Detector, paths: Sequence[Path], desc: str = "scoring",
                batch: int = 8) -> tuple[list[Path], np.ndarray, list[np.ndarray]]:
    """Score image files -> (paths that decoded, image scores, work maps); bad files are skipped."""
    kept, scores, maps, pending = [], [], [], []

    def flush() -> None:
        for (p, _), (work_map, _) in zip(pending, detector.maps([img for _, img in pending]), strict=True):
            kept.append(p)
            scores.append(detector.score_map(work_map))
            maps.append(work_map)
        pending.clear()

    for p, img in tqdm(iter_images(paths), total=len(paths), desc=desc, unit="img", mininterval=2.0):
        if img is not None:
            pending.append((p, img))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return kept, np.asarray(scores, np.float64), maps


def calibrate(detector: Detector, paths: Sequence[Path], alpha: float = 0.01,
              pixel_quantile: float = 0.999, seed: int = 0) -> Calibration:
    """Split-conformal image threshold + pixel threshold from good calibration images."""
    _, scores, maps = score_files(detector, paths, desc="calibration")
    if len(scores) == 0:
        raise ValueError("no usable calibration images")
    scores.sort()
    n = len(scores)
    threshold = conformal_threshold(scores, alpha)
    if not np.isfinite(threshold):
        log.warning(
            "only %d calibration images: split-conformal calibration needs at least %d for alpha=%g "
            "(rank %d > n). Using the largest calibration score; the false-alarm guarantee is then "
            "only 1/(n+1) = %.3g. Add good images or raise --alpha.",
            n, int(np.ceil(1 / alpha)) - 1, alpha, conformal_rank(n, alpha), 1 / (n + 1))
        threshold = float(scores[-1])
    pixels = np.concatenate([m.ravel() for m in maps])
    if len(pixels) > MAX_PIXEL_SAMPLE:
        pixels = np.random.default_rng(seed).choice(pixels, MAX_PIXEL_SAMPLE, replace=False)
    pixel_threshold = float(np.quantile(pixels, pixel_quantile))
    return Calibration(alpha=alpha, threshold=float(threshold), scores=tuple(float(s) for s in scores),
                       pixel_threshold=pixel_threshold, pixel_quantile=pixel_quantile)


def f1_optimal(good: np.ndarray, bad: np.ndarray) -> dict[str, float]:
    """Threshold maximising F1 (defect = positive) over labelled scores, with its precision/recall."""
    scores = np.concatenate([good, bad])
    labels = np.concatenate([np.zeros(len(good)), np.ones(len(bad))])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    precision = tp / (tp + fp)
    recall = tp / max(len(bad), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    last = np.r_[s[1:] != s[:-1], True]  # only cut between distinct scores
    i = int(np.argmax(np.where(last, f1, -1)))
    threshold = float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i])
    return {"threshold": threshold, "f1": float(f1[i]), "precision": float(precision[i]),
            "recall": float(recall[i])}
