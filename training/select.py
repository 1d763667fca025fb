"""Choose a model's scoring from good images only, by injecting synthetic defects.

No single scoring suits every product: normalising the patch error by position helps parts
held in a fixed pose and can hurt parts placed freely. The fit therefore tries each
candidate on a few good training images and on copies of them carrying one synthetic
defect each (a patch cut from elsewhere in the image and pasted, a darker or brighter
blob, or a thin scratch), keeps the candidate whose image scores separate the two best
(AUROC), and records the choice and the table in the artifact. The images come from the
SAE's fit split, never from the calibration split, so the conformal guarantee holds on
whatever score is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from models.config import NORMALIZE_CHOICES
from models.detector import Detector
from models.imageio import ImageDecodeError
from models.preprocess import Picture, as_float
from training.metrics import auroc

log = logging.getLogger(__name__)
SYNTHETIC_KINDS = ("cutpaste", "blob", "scratch")


def synthetic_defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float image in [0, 1] -> a copy with one synthetic defect, and its bool mask."""
    h, w = img.shape[:2]
    side = min(h, w)
    out = img.copy()
    mask = np.zeros((h, w), np.uint8)
    if kind == "cutpaste":
        ph, pw = (max(2, int(rng.uniform(0.04, 0.10) * side)) for _ in range(2))
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = img[sy : sy + ph, sx : sx + pw]
        patch = patch[::-1] if rng.random() < 0.5 else patch[:, ::-1]
        out[ty : ty + ph, tx : tx + pw] = np.clip(patch * rng.uniform(0.8, 1.2), 0, 1)
        mask[ty : ty + ph, tx : tx + pw] = 1
    elif kind == "blob":
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        ry, rx = (max(1, int(rng.uniform(0.01, 0.04) * side)) for _ in range(2))
        cv2.ellipse(mask, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.2)
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, 0.3 * min(rx, ry)))
        alpha[alpha < 0.02] = 0  # soft edge, but a bounded one: the mask is everything changed
        mask = (alpha > 0).astype(np.uint8)
        out = np.clip(out + shift * alpha[..., None], 0, 1)
    elif kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.3) * side
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1,
                 max(1, int(rng.uniform(0.003, 0.01) * side)))
        shade = rng.choice([0.05, 0.95])
        out = np.where(mask[..., None] > 0, 0.4 * out + 0.6 * shade, out)
    else:
        raise ValueError(f"unknown synthetic defect {kind!r}, choose from {SYNTHETIC_KINDS}")
    return out.astype(np.float32), mask > 0


def select_normalization(detector: Detector, paths: Sequence[Path], n_images: int = 64,
                         seed: int = 0) -> tuple[str, dict[str, float]]:
    """-> (chosen normalisation, {candidate: AUROC of good vs synthetic defects})."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))[:n_images]
    good = []
    for i in order:
        try:
            good.append(detector.read(paths[i]))
        except ImageDecodeError as e:
            log.warning("selection: %s", e)
    if len(good) < 4:  # too few to measure anything, and too few for per-position statistics
        log.warning("only %d good fit images: keeping the raw reconstruction error as the score", len(good))
        return "none", {}
    kinds = [SYNTHETIC_KINDS[j % len(SYNTHETIC_KINDS)] for j in range(len(good))]
    bad = [Picture(synthetic_defect(rng, as_float(pic.pixels), kind)[0], pic.original_hw)
           for pic, kind in zip(good, kinds, strict=True)]
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    table = {}
    for cand in NORMALIZE_CHOICES:
        d = detector.with_scoring(normalize=cand)
        scores = [d.score_map(m) for m, _ in d.maps(good + bad)]
        table[cand] = auroc(labels, np.asarray(scores))
    choice = max(NORMALIZE_CHOICES, key=lambda c: table[c])  # ties keep the earlier (simpler) candidate
    log.info("scoring selection on %d good images + %d synthetic defects: %s -> %s", len(good), len(bad),
             ", ".join(f"{k} {v:.3f}" for k, v in table.items()), choice)
    return choice, table
