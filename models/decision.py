"""The decision, in NumPy only: image score, split-conformal threshold and p-value, defect regions.

Every runtime (PyTorch ``Detector``, ONNX ``PortableDetector``, the trainer's evaluation and
reports) decides through these functions, and none of them imports torch, so an ONNX-only
install serves a model with exactly the same decision.

The guarantee: with n exchangeable good calibration scores, the threshold at rank
ceil((n + 1)(1 - alpha)) flags a new good image with probability at most alpha. That rank
exists only for alpha >= 1 / (n + 1) (``min_alpha``); a smaller alpha has no finite threshold and
is refused (``UnsupportedAlpha``), never quietly turned into "flag nothing".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

_REL = 1e-9  # float slack so that alpha == 1/(n+1), computed in floating point, still counts as supported


class UnsupportedAlpha(ValueError):
    """An alpha outside (0, 1), or smaller than the calibration can support (``minimum``)."""

    def __init__(self, alpha: float, n: int):
        self.alpha, self.n, self.minimum = alpha, n, min_alpha(n)
        if not 0 < alpha < 1 or not math.isfinite(alpha):
            msg = f"alpha must be in (0, 1), got {alpha}"
        else:
            msg = (f"alpha={alpha:g} is below the smallest false-alarm rate this calibration supports: "
                   f"1/(n+1) = {self.minimum:.6g} with n = {n} calibration images (no finite threshold "
                   f"guarantees a smaller rate); use alpha >= {self.minimum:.6g} or calibrate on more good images")
        super().__init__(msg)


def min_alpha(n: int) -> float:
    """Smallest false-alarm rate n calibration scores can guarantee: 1 / (n + 1)."""
    return 1.0 / (n + 1)


def check_alpha(alpha: float, n: int) -> float:
    """`alpha` if n calibration scores support it, else ``UnsupportedAlpha`` (a ValueError)."""
    if not (math.isfinite(alpha) and 0 < alpha < 1) or alpha < min_alpha(n) * (1 - _REL):
        raise UnsupportedAlpha(alpha, n)
    return alpha


def conformal_rank(n: int, alpha: float) -> int:
    """1-based rank of the split-conformal threshold among n sorted calibration scores (<= n for a
    supported alpha)."""
    return min(n, math.ceil((n + 1) * (1 - alpha) - _REL)) if alpha >= min_alpha(n) * (1 - _REL) \
        else math.ceil((n + 1) * (1 - alpha))


def conformal_threshold(sorted_scores: np.ndarray, alpha: float) -> float:
    """Threshold whose false-alarm rate on exchangeable good images is at most alpha: the
    ceil((n+1)(1-alpha))-th smallest calibration score. ``UnsupportedAlpha`` when alpha < 1/(n+1)."""
    n = len(sorted_scores)
    check_alpha(alpha, n)
    return float(sorted_scores[conformal_rank(n, alpha) - 1])


def false_alarm_tail(k: int, m: int, n: int, alpha: float) -> float:
    """P(at least k of m new good images are flagged) under the guarantee's own assumption: the m images
    exchangeable with the n calibration images that set the threshold at ``conformal_rank(n, alpha)``.

    Exact, not a binomial approximation: with the threshold at rank r, the share of good images above it is
    Beta(n + 1 - r, r) over calibration draws (continuous scores), so the count among m new ones is
    beta-binomial(m, n + 1 - r, r), whose mean m (n + 1 - r) / (n + 1) is at most m alpha. A small value says
    the test images are not what the calibration images were (new parts, a shifted line): the card's alpha does
    not hold for them. A single false alarm among a few dozen images is no such evidence."""
    if not (0 <= k <= m and n >= 1):
        raise ValueError(f"need 0 <= k <= m and n >= 1, got k={k}, m={m}, n={n}")
    check_alpha(alpha, n)
    if k == 0:
        return 1.0
    r = conformal_rank(n, alpha)
    a, b = n + 1 - r, r
    log_beta_ab = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    def log_pmf(j: int) -> float:
        log_choose = math.lgamma(m + 1) - math.lgamma(j + 1) - math.lgamma(m - j + 1)
        return log_choose + math.lgamma(j + a) + math.lgamma(m - j + b) - math.lgamma(m + a + b) - log_beta_ab

    return min(1.0, math.fsum(math.exp(log_pmf(j)) for j in range(k, m + 1)))  # the upper tail: exact when small


def false_alarm_bound(n: int, alpha: float, confidence: float = 0.9) -> float:
    """The false-alarm rate a model calibrated on n good images stays at or below with probability
    `confidence` over the draw of those images (exchangeable with the good images it then inspects).

    Alpha is the average over calibration draws; one fitted model's own rate varies around it, and on few
    images widely: with the threshold at rank r its rate is Beta(n + 1 - r, r) (as in ``false_alarm_tail``),
    so 35 images at their smallest alpha, 1/36 = 0.028, leave one model in ten above 0.064. This is that
    Beta law's `confidence` quantile, found by bisection on its CDF, which for whole-number parameters is a
    binomial tail: P(Beta(a, b) <= x) = P(Binomial(a + b - 1, x) >= a)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    check_alpha(alpha, n)
    r = conformal_rank(n, alpha)
    a, trials = n + 1 - r, n

    def cdf(x: float) -> float:  # 1 - P(Binomial(trials, x) < a): a sum of a terms, a ~ alpha n is small
        log_x, log_1x = math.log(x), math.log1p(-x)
        below = math.fsum(math.exp(math.lgamma(trials + 1) - math.lgamma(j + 1) - math.lgamma(trials - j + 1)
                                   + j * log_x + (trials - j) * log_1x) for j in range(a))
        return 1.0 - below

    lo, hi = 0.0, 1.0
    for _ in range(60):  # 2^-60: far below any rate a person reads
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < confidence else (lo, mid)
    return hi


def conformal_p_value(score: float, sorted_scores: np.ndarray) -> float:
    """(1 + #{calibration scores >= score}) / (n + 1); in [1/(n+1), 1]. A finite score is required."""
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}")
    n = len(sorted_scores)
    at_least = n - int(np.searchsorted(sorted_scores, score, side="left"))
    return (1 + at_least) / (n + 1)


def decide(score: float, threshold: float) -> bool:
    """Anomalous when the score exceeds the threshold (both finite: nothing else reaches here)."""
    if not (math.isfinite(score) and math.isfinite(threshold)):
        raise ValueError(f"a decision needs a finite score and threshold, got {score} and {threshold}")
    return bool(score > threshold)


def decide_all(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``decide`` over an array of scores (evaluation, reports) -> bool array."""
    scores = np.asarray(scores, np.float64)
    if not (np.isfinite(scores).all() and math.isfinite(threshold)):
        raise ValueError("a decision needs finite scores and a finite threshold")
    return scores > threshold


def image_score(work_map: np.ndarray, mode: str = "max", top_fraction: float = 0.01) -> float:
    """(H, W) map -> scalar: its max, or the mean of its top `top_fraction` pixels."""
    if mode == "max":
        return float(work_map.max())
    flat = work_map.ravel()
    n = max(1, int(round(top_fraction * flat.size)))
    return float(np.partition(flat, flat.size - n)[-n:].mean())


def score_ratio(score: float, threshold: float) -> float | None:
    """score / threshold for dashboards, or None where it means nothing (threshold <= 0, e.g. z-scores)."""
    if threshold > 0 and math.isfinite(score) and math.isfinite(threshold):
        return score / threshold
    return None


def score_scale(threshold: float, sorted_scores: np.ndarray) -> float:
    """A positive scale for score differences (tolerances, colour maps): |threshold|, or the spread of the
    calibration scores where that is larger (z-scored thresholds can be zero or negative)."""
    spread = float(sorted_scores[-1] - sorted_scores[0]) if len(sorted_scores) else 0.0
    return max(abs(threshold), spread, 1e-12)


def normalized_map(work_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Map -> [0, 1] for display: 0.5 at the pixel threshold, 1 at twice its distance from zero; the same as
    map / (2 * threshold) for a positive threshold, and defined for a zero or negative one."""
    scale = abs(pixel_threshold) if pixel_threshold != 0 else 1.0
    return np.clip(0.5 + (work_map - pixel_threshold) / (2 * scale), 0.0, 1.0)


class Region(NamedTuple):
    x: int
    y: int
    width: int
    height: int
    area: int
    """Pixels above the threshold, in original-image pixels."""
    peak: float


def find_regions(work_map: np.ndarray, threshold: float, scale_xy: tuple[float, float],
                 max_regions: int = 32, min_area: int = 1) -> list[Region]:
    """Connected areas of `work_map` above `threshold` (at least `min_area` map pixels),
    boxes in original pixels, largest first."""
    mask = (work_map > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sx, sy = scale_xy
    out = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        peak = float(work_map[labels == i].max())
        out.append(Region(round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy)),
                          max(1, round(area * sx * sy)), peak))
    out.sort(key=lambda r: r.area, reverse=True)
    return out[:max_regions]
