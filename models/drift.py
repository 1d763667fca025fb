"""Is the calibration still valid? Change detection on the stream of conformal p-values (NumPy only).

While the process is unchanged, a new good image's score is exchangeable with the calibration
scores and the scores seen before it. Its *online, smoothed* conformal p-value (ranked against
the calibration scores and every score since, ties and its own rank broken by a uniform draw)
is then exactly uniform on (0, 1) and independent of the ones before (Vovk, Nouretdinov,
Gammerman 2003); ranking against the fixed calibration set alone would make the stream's
p-values dependent through that set. Defects break uniformity on purpose (small p-values), so
the drift statistic only looks at images with p > alpha, rescaled to q = (p - alpha) / (1 - alpha),
which is uniform on (0, 1) again while nothing drifts.

Each q bets with power calibrators f_e(q) = e q^(e-1), e in EPSILONS (mean exactly 1 under the
uniform law, large when q runs small, i.e. when good parts creep towards the threshold:
lighting, a moved camera, a new material, dirt on the lens). Each feeds a **Shiryaev-Roberts**
statistic R_n = (1 + R_{n-1}) f_e(q_n), and the monitor reports their mean. R_n - n is a
martingale while nothing drifts, so the alarm R_n >= A has a mean time to false alarm of at
least A images (optional stopping), and unlike a plain test martingale (Ville's bound over the
whole stream) it reacts as fast after a million clean images as after ten.

A burst of real anomalies is a different question with its own alarm: a Bernoulli
Shiryaev-Roberts statistic on the events p <= alpha (online p-values, so each event has
probability exactly alpha while nothing changed, independently of the calibration draw; the
verdicts' fixed threshold flags a share that varies around alpha from one calibration set to
the next), betting that their share is `burst_factor` times the usual one (alpha plus the
line's usual defect rate). While the share stays at or below the usual one, the same bound
holds: at least A images between false alarms on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPSILONS = (0.25, 0.5, 0.75)
"""Power-calibrator exponents; their Shiryaev-Roberts statistics are averaged (robust to the drift's size)."""
MAX_REFERENCE = 1_000_000
"""Scores kept for online p-values (8 MB); past this the reference stops growing and p-values are ranked
against a fixed million scores, whose dependence is negligible (rank error below 1e-3)."""


@dataclass(frozen=True)
class DriftConfig:
    threshold: float = 1e6
    """Alarm when a statistic reaches this: on an unchanged process the mean number of images between
    false alarms is at least this many (drift: images with p > alpha; burst: all images)."""
    usual_defect_rate: float = 0.0
    """The line's usual share of defective parts; the burst alarm's null is alpha plus this."""
    burst_factor: float = 5.0
    """The burst alarm bets that the flagged share has risen to this many times the usual one."""

    def __post_init__(self) -> None:
        if not self.threshold > 1:
            raise ValueError(f"drift threshold must be > 1, got {self.threshold}")
        if not 0 <= self.usual_defect_rate < 1:
            raise ValueError(f"usual defect rate must be in [0, 1), got {self.usual_defect_rate}")
        if not self.burst_factor > 1:
            raise ValueError(f"burst factor must be > 1, got {self.burst_factor}")


def smoothed_p_value(n_above: int, n_ties: int, n: int, u: float) -> float:
    """(n_above + u (n_ties + 1)) / (n + 1): a score's rank among n reference scores, ties broken by u ~ U(0, 1)."""
    return (n_above + u * (n_ties + 1)) / (n + 1)


def power_bets(q: float) -> np.ndarray:
    """f_e(q) = e q^(e-1) for e in EPSILONS; q in (0, 1]."""
    e = np.asarray(EPSILONS)
    return e * max(q, 1e-12) ** (e - 1)


class Reference:
    """A growing multiset of scores answering "how many are above / equal to s": a sorted array (binary
    search) plus a small buffer of recent scores (compared directly) merged every `buffer` insertions."""

    def __init__(self, scores: np.ndarray, buffer: int = 256):
        self.sorted = np.sort(np.asarray(scores, np.float64))
        self.pending = np.empty(buffer, np.float64)
        self.n_pending = 0

    def __len__(self) -> int:
        return len(self.sorted) + self.n_pending

    def counts(self, s: float) -> tuple[int, int]:
        lo, hi = np.searchsorted(self.sorted, s, "left"), np.searchsorted(self.sorted, s, "right")
        recent = self.pending[: self.n_pending]
        return len(self.sorted) - int(hi) + int((recent > s).sum()), int(hi - lo) + int((recent == s).sum())

    def add(self, s: float) -> None:
        if len(self) >= MAX_REFERENCE:
            return
        self.pending[self.n_pending] = s
        self.n_pending += 1
        if self.n_pending == len(self.pending):
            self.sorted = np.sort(np.r_[self.sorted, self.pending])
            self.n_pending = 0


class DriftMonitor:
    """Drift and anomaly-burst statistics for one calibrated model version. A new version (a new
    calibration) gets a new monitor: its evidence starts from zero."""

    def __init__(self, calibration_scores: np.ndarray, alpha: float, cfg: DriftConfig = DriftConfig(),
                 seed: int = 0):
        if len(calibration_scores) == 0:
            raise ValueError("a drift monitor needs calibration scores")
        self.reference = Reference(calibration_scores)
        self.alpha, self.cfg = float(alpha), cfg
        self.rng = np.random.default_rng(seed)
        self.p0 = min(alpha + cfg.usual_defect_rate, 0.5)
        self.p1 = min(cfg.burst_factor * self.p0, 0.999)
        self.drift_sr = np.zeros(len(EPSILONS))
        self.burst_sr = 0.0
        self.seen = self.seen_good = 0

    def observe(self, score: float) -> float:
        """Record one inspected image's score; returns its smoothed online p-value."""
        if not math.isfinite(score):
            raise ValueError(f"a drift monitor observes finite scores only, got {score}")
        above, ties = self.reference.counts(score)
        p = smoothed_p_value(above, ties, len(self.reference), float(self.rng.random()))
        self.reference.add(score)
        self.seen += 1
        flagged = p <= self.alpha
        lr = self.p1 / self.p0 if flagged else (1 - self.p1) / (1 - self.p0)
        self.burst_sr = (1 + self.burst_sr) * lr
        if p > self.alpha:
            self.seen_good += 1
            self.drift_sr = (1 + self.drift_sr) * power_bets((p - self.alpha) / (1 - self.alpha))
        return p

    @property
    def drift_statistic(self) -> float:
        return float(self.drift_sr.mean())

    @property
    def drift_evidence(self) -> float:
        """log10 of the drift statistic (the alarm is at log10(threshold))."""
        return math.log10(max(self.drift_statistic, 1e-300))

    @property
    def burst_evidence(self) -> float:
        return math.log10(max(self.burst_sr, 1e-300))

    @property
    def drifting(self) -> bool:
        return self.drift_statistic >= self.cfg.threshold

    @property
    def bursting(self) -> bool:
        return self.burst_sr >= self.cfg.threshold
