"""Choose a model's scoring from good images only, by injecting synthetic defects.

No single scoring suits every product: normalising the patch error by position helps parts
held in a fixed pose and can hurt parts placed freely. The fit therefore tries each
candidate on held-out good images (the selection split: they fit neither the SAE nor its
per-position statistics, and do not calibrate) and on copies of them carrying synthetic
defects (a patch cut from elsewhere in the image and pasted, a darker or brighter blob, or
a thin scratch), and keeps the simplest score unless another separates the two
significantly better (a paired bootstrap over the selection images). Each held-out image also
counts as good once more, moved by a pose jitter (``POSE_JITTER`` of its long side): a score that flags a
good part moved slightly, as per-position statistics do on parts photographed in free pose, pays for it
in the comparison (on ``tire`` it decided the choice: bench/results/accuracy.md). Scoring the fit images
themselves, as the first version did, flatters the per-position scores, whose statistics
were fitted on exactly those images. The choice and the table go into the artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.config import NORMALIZE_CHOICES
from models.detector import Detector
from models.imageio import ImageDecodeError
from models.preprocess import Picture, as_float
from training.defects import POSE_JITTER, SYNTHETIC_KINDS, moved_picture, synthetic_defect
from training.metrics import auroc

log = logging.getLogger(__name__)


def paired_auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """AUROC of defect copies against good images; good: (n,) or (n, g) the g good versions of each image,
    bad: (n, m) its m defect copies."""
    return auroc(np.r_[np.zeros(good.size), np.ones(bad.size)], np.r_[good.ravel(), bad.ravel()])


def select_normalization(detector: Detector, paths: Sequence[Path], seed: int = 0, copies: int = 3,
                         n_boot: int = 400, level: float = 0.95, placement: str = "uniform",
                         jitter: float = POSE_JITTER) -> tuple[str, dict[str, Any]]:
    """-> (chosen normalisation, the table it was chosen from).

    `paths` are held-out good images (the selection split: they fitted nothing chosen between). Each
    gets `copies` synthetic defects of different kinds (3 by default: one of each; 2 until 2026-12-04, whose
    choice on magnetic_tile flipped to the raw error in one fit of six at a cost of 0.067 test AUROC:
    bench/results/selection_seeds.md) and, as a second good image, a copy moved by a
    pose jitter of `jitter` x its long side (0: none). A candidate replaces the simplest score
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
    kinds = [SYNTHETIC_KINDS[(i + j) % len(SYNTHETIC_KINDS)] for i in range(len(good)) for j in range(copies)]
    bad = [Picture(synthetic_defect(rng, as_float(good[i // copies].pixels), kind, placement)[0],
                   good[i // copies].original_hw) for i, kind in enumerate(kinds)]
    moved = [moved_picture(rng, p, jitter) for p in good] if jitter > 0 else []
    n, g = len(good), 1 + bool(moved)
    d = detector.with_scoring(normalize=NORMALIZE_CHOICES[0])  # every candidate from one pass
    maps = d.maps(good + moved + bad, lambda c: d.candidate_canvas_maps(c, NORMALIZE_CHOICES))
    scores = {}
    for j, cand in enumerate(NORMALIZE_CHOICES):
        s = np.asarray([d.score_map(m[..., j]) for m, _ in maps])
        scores[cand] = (s[: n * g].reshape(g, n).T, s[n * g :].reshape(n, copies))
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
    log.info("scoring selection on %d held-out good images (+ %d moved) + %d synthetic defects: %s -> %s", n,
             len(moved), len(bad),
             ", ".join(f"{c} {auc[c]:.3f}" + (f" (lead over {base} >= {lows[c]:+.3f} at {level:.0%})" if c in lows
                                                 else "") for c in NORMALIZE_CHOICES), choice)
    return choice, {"auroc_on_synthetic_defects": auc, f"lead_lower_bound_{int(level * 100)}": lows,
                    "n_images": n, "defects_per_image": copies, "placement": placement, "pose_jitter": jitter,
                    "rule": f"{base} unless a lead is significant"}
