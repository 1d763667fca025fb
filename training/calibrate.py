"""Decision thresholds from held-out good images (split-conformal) and labelled-defect reports."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.decision import min_alpha
from models.detector import Detector
from models.inspection import Calibration
from training.data import iter_images

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

    images = iter_images(paths, detector.config.preprocess)
    for p, img in tqdm(images, total=len(paths), desc=desc, unit="img", mininterval=2.0):
        if img is not None:
            pending.append((p, img))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return kept, np.asarray(scores, np.float64), maps


@dataclass(frozen=True)
class CalibrationConfig:
    alpha: float = 0.01
    """Target false-alarm rate of the image decision (split-conformal)."""
    pixel_quantile: float = 0.999
    """Quantile of good calibration-image map pixels that sets the region threshold."""
    fraction: float = 0.2
    """Share of the good images held out for calibration (never used to fit the SAE)."""
    min_count: int = 30
    """At least this many calibration images (at most half of all images)."""
    seed: int = 0
    """Seed of the fit / calibration split."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.pixel_quantile < 1:
            raise ValueError(f"pixel_quantile must be in (0, 1), got {self.pixel_quantile}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"calibration fraction must be in (0, 1), got {self.fraction}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")


def split_calibration(paths: Sequence[Path], cfg: CalibrationConfig) -> tuple[list[Path], list[Path]]:
    """Seeded split of good images into (fit, calibration); calibration never trains the SAE."""
    if len(paths) < 2:
        raise ValueError(f"need at least 2 good images to fit and calibrate, found {len(paths)}")
    n_cal = max(cfg.min_count, math.ceil(cfg.fraction * len(paths)))
    n_cal = min(n_cal, len(paths) // 2)  # never leave the SAE with fewer images than calibration
    order = np.random.default_rng(cfg.seed).permutation(len(paths))
    cal = sorted(paths[i] for i in order[:n_cal])
    fit = sorted(paths[i] for i in order[n_cal:])
    return fit, cal


def calibrate(detector: Detector, paths: Sequence[Path], cfg: CalibrationConfig) -> Calibration:
    """Split-conformal image threshold + pixel threshold from good calibration images."""
    alpha, pixel_quantile, seed = cfg.alpha, cfg.pixel_quantile, cfg.seed
    _, scores, maps = score_files(detector, paths, desc="calibration")
    if len(scores) == 0:
        raise ValueError("no usable calibration images")
    if not np.isfinite(scores).all():
        raise ValueError("a calibration image gave a non-finite score: the model is broken; refusing to calibrate")
    n = len(scores)
    if alpha < min_alpha(n):
        log.warning(
            "only %d calibration images: split-conformal calibration needs at least %d for alpha=%g. "
            "The model guarantees alpha = 1/(n+1) = %.4g instead (threshold = the largest calibration "
            "score); its card and metrics state that. Add good images or raise --alpha.",
            n, int(np.ceil(1 / alpha)) - 1, alpha, min_alpha(n))
    pixels = np.concatenate([m.ravel() for m in maps])
    if len(pixels) > MAX_PIXEL_SAMPLE:
        pixels = np.random.default_rng(seed).choice(pixels, MAX_PIXEL_SAMPLE, replace=False)
    pixel_threshold = float(np.quantile(pixels, pixel_quantile))
    return Calibration.from_scores(scores, alpha, pixel_threshold, pixel_quantile)


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
