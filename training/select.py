"""Choose a model's scoring from good images only, by injecting synthetic defects.

No single scoring suits every product: normalising the patch error by position helps parts
held in a fixed pose and can hurt parts placed freely. The fit therefore tries each
candidate on held-out good images (the selection split: they fit neither the SAE nor its
per-position statistics, and do not calibrate) and on copies of them carrying synthetic
defects (a patch cut from elsewhere in the image and pasted, a darker or brighter blob, or
a thin scratch), and keeps the simplest score unless another separates the two
significantly better (a paired bootstrap over the selection images). Scoring the fit images
themselves, as the first version did, flatters the per-position scores, whose statistics
were fitted on exactly those images. The choice and the table go into the artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def paired_auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """AUROC of defect copies against good images; good: (n,), bad: (n, m) the m copies of each good image."""
    return auroc(np.r_[np.zeros(good.size), np.ones(bad.size)], np.r_[good, bad.ravel()])


def select_normalization(detector: Detector, paths: Sequence[Path], seed: int = 0, copies: int = 2,
                         n_boot: int = 400, level: float = 0.95) -> tuple[str, dict[str, Any]]:
    """-> (chosen normalisation, the table it was chosen from).

    `paths` are held-out good images (the selection split: they fitted nothing chosen between). Each
    gets `copies` synthetic defects of different kinds. A candidate replaces the simplest score
    (``none``) only when its AUROC lead is significant: the lower end of a one-sided `level` bootstrap
    interval over the selection images (paired: the same resample for every candidate) is above zero;
    among significant candidates the highest AUROC wins. A lead of a fraction of a point on a few dozen
    images is noise, and position statistics can look better on synthetic defects than on real ones.
    """
    rng = np.random.default_rng(seed)
    good = []
    for p in paths:
        try:
            good.append(detector.read(p))
        except ImageDecodeError as e:
            log.warning("selection: %s", e)
    if len(good) < 8:  # too few to measure anything
        log.warning("only %d held-out selection images: keeping the raw reconstruction error as the score",
                    len(good))
        return "none", {"n_images": len(good), "reason": "too few selection images"}
    bad = [Picture(synthetic_defect(rng, as_float(pic.pixels), SYNTHETIC_KINDS[(i + j) % len(SYNTHETIC_KINDS)])[0],
                   pic.original_hw) for i, pic in enumerate(good) for j in range(copies)]
    n = len(good)
    scores = {}
    for cand in NORMALIZE_CHOICES:
        d = detector.with_scoring(normalize=cand)
        s = np.asarray([d.score_map(m) for m, _ in d.maps(good + bad)])
        scores[cand] = (s[:n], s[n:].reshape(n, copies))
    auc = {c: paired_auroc(*scores[c]) for c in NORMALIZE_CHOICES}
    base = NORMALIZE_CHOICES[0]
    boot = rng.integers(0, n, (n_boot, n))
    lows = {}
    for c in NORMALIZE_CHOICES[1:]:
        diffs = [paired_auroc(scores[c][0][b], scores[c][1][b]) - paired_auroc(scores[base][0][b], scores[base][1][b])
                 for b in boot]
        lows[c] = float(np.quantile(diffs, 1 - level))
    significant = [c for c in NORMALIZE_CHOICES[1:] if lows[c] > 0]
    choice = max(significant, key=lambda c: auc[c]) if significant else base
    log.info("scoring selection on %d held-out good images + %d synthetic defects: %s -> %s", n, len(bad),
             ", ".join(f"{c} {auc[c]:.3f}" + (f" (lead over {base} >= {lows[c]:+.3f} at {level:.0%})" if c in lows
                                                 else "") for c in NORMALIZE_CHOICES), choice)
    return choice, {"auroc_on_synthetic_defects": auc, f"lead_lower_bound_{int(level * 100)}": lows,
                    "n_images": n, "defects_per_image": copies, "rule": f"{base} unless a lead is significant"}
