"""What every runtime shares after its maps: decoding for the model's geometry, canvases, stitching,
the image score, regions and the conformal decision.

``Detector`` (PyTorch) and ``PortableDetector`` (an exported ONNX model) are both ``Scorer``s:
they differ only in ``canvas_maps``, so an exported model decides exactly as the service does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.config import ModelConfig
from models.decision import (
    Region,
    check_alpha,
    conformal_p_value,
    conformal_threshold,
    decide,
    false_alarm_bound,
    find_regions,
    image_score,
    min_alpha,
)
from models.geometry import FeatureGrid
from models.imageio import DEFAULT_MAX_PIXELS, decode_image, read_image
from models.preprocess import Layout, Picture, Stitcher, plan_canvases


@dataclass(frozen=True)
class Calibration:
    """A split-conformal operating point. Complete when constructed: the alpha is one the scores
    support (>= 1/(n+1)), the threshold is the one the scores give for it, everything is finite."""

    alpha: float
    """False-alarm rate the threshold guarantees on exchangeable good images (what the card states)."""
    requested_alpha: float
    """The rate that was asked for; larger than `alpha` never, smaller when the calibration set was too
    small to support it (then `alpha` = 1/(n+1), the threshold is the largest calibration score)."""
    threshold: float
    """Split-conformal threshold: the ceil((n+1)(1-alpha))-th smallest calibration score."""
    scores: tuple[float, ...]
    """Sorted image scores of the held-out good calibration images."""
    pixel_threshold: float
    """Map value above which a pixel belongs to a defect region."""
    pixel_quantile: float
    """Quantile of calibration-image map pixels that set `pixel_threshold`."""

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError("a calibration needs at least one score")
        if not all(math.isfinite(s) for s in self.scores):
            raise ValueError("calibration scores must be finite")
        if list(self.scores) != sorted(self.scores):
            raise ValueError("calibration scores must be sorted")
        check_alpha(self.alpha, len(self.scores))
        if not (0 < self.requested_alpha <= self.alpha * (1 + 1e-9)):
            raise ValueError(f"requested alpha {self.requested_alpha} must be in (0, alpha={self.alpha}]")
        expected = conformal_threshold(np.asarray(self.scores), self.alpha)
        if self.threshold != expected:
            raise ValueError(f"threshold {self.threshold} is not the conformal threshold {expected} of the "
                             f"calibration scores at alpha={self.alpha:g}")
        if not (math.isfinite(self.pixel_threshold) and 0 < self.pixel_quantile < 1):
            raise ValueError(f"pixel threshold {self.pixel_threshold} / quantile {self.pixel_quantile} invalid")

    @property
    def min_alpha(self) -> float:
        """Smallest alpha these calibration scores support: 1/(n+1)."""
        return min_alpha(len(self.scores))

    @property
    def false_alarm_rate_90(self) -> float:
        """The false-alarm rate this model stays at or below with 90 % confidence over the draw of its calibration
        images (alpha is the average over draws; on few images one model's own rate spreads widely around it)."""
        return false_alarm_bound(len(self.scores), self.alpha, 0.9)

    @classmethod
    def from_scores(cls, scores: np.ndarray, requested_alpha: float, pixel_threshold: float,
                    pixel_quantile: float) -> Calibration:
        """The calibration for `requested_alpha`, or for 1/(n+1) when the scores cannot support it
        (``alpha`` then says what is guaranteed; ``requested_alpha`` what was asked)."""
        s = np.sort(np.asarray(scores, np.float64))
        alpha = max(requested_alpha, min_alpha(len(s)))
        return cls(alpha=alpha, requested_alpha=requested_alpha, threshold=conformal_threshold(s, alpha),
                   scores=tuple(float(x) for x in s), pixel_threshold=float(pixel_threshold),
                   pixel_quantile=pixel_quantile)

    def with_alpha(self, alpha: float) -> Calibration:
        """The operating point for another false-alarm rate, re-derived from the stored calibration
        scores (no refit, no re-export). ``UnsupportedAlpha`` (a ValueError naming the smallest
        supported alpha) when the scores cannot support it."""
        check_alpha(alpha, len(self.scores))
        return dataclasses.replace(self, alpha=alpha, requested_alpha=alpha,
                                   threshold=conformal_threshold(np.asarray(self.scores), alpha))



class Inspection(NamedTuple):
    score: float
    threshold: float
    p_value: float
    anomalous: bool
    anomaly_map: np.ndarray
    """(work_h, work_w) float32 map on the scaled image; see ``layout``."""
    layout: Layout
    regions: list[Region]
    alpha: float
    """False-alarm rate of the operating point that made the verdict."""



def at_operating_point(result: Inspection, calibration: Calibration, alpha: float) -> Inspection:
    """The same inspection decided at another false-alarm rate (threshold from the calibration scores)."""
    cal = calibration.with_alpha(alpha)
    return result._replace(threshold=cal.threshold, anomalous=decide(result.score, cal.threshold), alpha=alpha)


MAX_CANVASES = 32
"""Most canvases made and scored at once (all images of a call together); one canvas is size^2 x 3 floats."""


class NonFiniteScore(ValueError):
    """The maps of an image hold NaN or inf: no verdict can be given."""


class Scorer:
    """Mixin: needs ``config``, ``calibration``, ``grid``, ``_cal_scores`` and ``canvas_maps``."""

    config: ModelConfig
    calibration: Calibration | None
    grid: FeatureGrid
    _cal_scores: np.ndarray | None

    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def can_explain(self) -> bool:
        """Whether ``explain`` can run: a latent atlas here (PyTorch) or an artifact to load it from (ONNX)."""
        return getattr(self, "atlas", None) is not None

    # ---- decoding for this model's geometry ------------------------------------------
    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "image") -> Picture:
        """Image file bytes -> a picture reduced at decode for this model's work image (see models.imageio)."""
        return decode_image(data, self.config.preprocess, max_pixels, source)

    def read(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
        return read_image(path, self.config.preprocess, max_pixels)

    def maps(self, images: list[Picture | np.ndarray],
             canvas_maps: Callable[[np.ndarray], np.ndarray] | None = None) -> list[tuple[np.ndarray, Layout]]:
        """Images -> (work map, layout) each. The canvases of all images go through the model together,
        at most ``MAX_CANVASES`` at a time, made as they are needed and stitched as they come back: memory
        is bounded by the chunk and the work maps, however many tiles an image has. `canvas_maps` replaces
        ``self.canvas_maps`` (e.g. several scorings of one pass, maps (N, S, S, C) -> work maps (h, w, C))."""
        canvas_maps = canvas_maps or self.canvas_maps
        plans = [plan_canvases(img, self.config.preprocess) for img in images]
        stitchers = [Stitcher(layout) for layout, _ in plans]
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            for (i, _), m in zip(pending, canvas_maps(np.stack([c for _, c in pending])), strict=True):
                stitchers[i].add(m)
            pending.clear()

        for i, (_, canvases) in enumerate(plans):
            for canvas in canvases:
                pending.append((i, canvas))
                if len(pending) >= MAX_CANVASES:
                    flush()
        if pending:
            flush()
        return [(s.result(), s.layout) for s in stitchers]

    def score_map(self, work_map: np.ndarray) -> float:
        s = self.config.scoring
        return image_score(work_map, s.image_score, s.top_fraction)

    def _inspection(self, work_map: np.ndarray, layout: Layout) -> Inspection:
        cal = self.calibration
        score = self.score_map(work_map)
        if not math.isfinite(score):  # inputs are checked finite; this is a model fault, never a verdict
            raise NonFiniteScore(f"the model produced a non-finite score ({score}); refusing to decide")
        (oh, ow), (wh, ww) = layout.original_hw, layout.work_hw
        regions = find_regions(work_map, cal.pixel_threshold, (ow / ww, oh / wh), min_area=self.grid.min_region_area)
        return Inspection(score, cal.threshold, conformal_p_value(score, self._cal_scores),
                          decide(score, cal.threshold), work_map, layout, regions, cal.alpha)

    def inspect(self, images: list[Picture | np.ndarray]) -> list[Inspection]:
        """Score decoded pictures (or (H, W, 3) uint8/float images); needs a calibrated detector."""
        if self.calibration is None:
            raise RuntimeError("detector is not calibrated")
        return [self._inspection(work_map, layout) for work_map, layout in self.maps(images)]

