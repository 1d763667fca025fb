"""What every runtime shares after its maps: decoding for the model's geometry, canvases, stitching,
the image score, regions and the conformal decision.

``Detector`` (PyTorch) and ``PortableDetector`` (an exported ONNX model) are both ``Scorer``s:
they differ only in ``canvas_maps``, so an exported model decides exactly as the service does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.config import ModelConfig
from models.geometry import FeatureGrid
from models.imageio import DEFAULT_MAX_PIXELS, decode_image, read_image
from models.preprocess import Layout, Picture, make_canvases, stitch
from models.scoring import Region, conformal_p_value, conformal_threshold, find_regions, image_score


@dataclass(frozen=True)
class Calibration:
    alpha: float
    """Target false-alarm rate of the image decision."""
    threshold: float
    """Split-conformal threshold: the ceil((n+1)(1-alpha))-th smallest calibration score."""
    scores: tuple[float, ...]
    """Sorted image scores of the held-out good calibration images."""
    pixel_threshold: float
    """Map value above which a pixel belongs to a defect region."""
    pixel_quantile: float
    """Quantile of calibration-image map pixels that set `pixel_threshold`."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if list(self.scores) != sorted(self.scores):
            raise ValueError("calibration scores must be sorted")

    def with_alpha(self, alpha: float) -> Calibration:
        """The operating point for another false-alarm rate, re-derived from the stored calibration
        scores (no refit, no re-export)."""
        return dataclasses.replace(self, alpha=alpha, threshold=conformal_threshold(np.asarray(self.scores), alpha))



class Inspection(NamedTuple):
    score: float
    threshold: float
    p_value: float
    anomalous: bool
    anomaly_map: np.ndarray
    """(work_h, work_w) float32 map on the scaled image; see ``layout``."""
    layout: Layout
    regions: list[Region]
    alpha: float = math.nan
    """False-alarm rate of the operating point that made the verdict."""



def decide(score: float, threshold: float) -> bool:
    """Anomalous when the score exceeds a finite threshold (an infinite one: too few calibration images)."""
    return bool(score > threshold) if math.isfinite(threshold) else False


def at_operating_point(result: Inspection, calibration: Calibration, alpha: float) -> Inspection:
    """The same inspection decided at another false-alarm rate (threshold from the calibration scores)."""
    cal = calibration.with_alpha(alpha)
    return result._replace(threshold=cal.threshold, anomalous=decide(result.score, cal.threshold), alpha=alpha)


class Scorer:
    """Mixin: needs ``config``, ``calibration``, ``grid``, ``_cal_scores`` and ``canvas_maps``."""

    config: ModelConfig
    calibration: Calibration | None
    grid: FeatureGrid
    _cal_scores: np.ndarray | None

    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ---- decoding for this model's geometry ------------------------------------------
    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "image") -> Picture:
        """Image file bytes -> a picture reduced at decode for this model's work image (see models.imageio)."""
        return decode_image(data, self.config.preprocess, max_pixels, source)

    def read(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
        return read_image(path, self.config.preprocess, max_pixels)

    def maps(self, images: list[Picture | np.ndarray]) -> list[tuple[np.ndarray, Layout]]:
        """Images -> (work map, layout) each; all canvases of all images go through one batch loop."""
        prepared = [make_canvases(img, self.config.preprocess) for img in images]
        if not prepared:
            return []
        all_maps = self.canvas_maps(np.concatenate([c for c, _ in prepared]))
        out, start = [], 0
        for canvases, layout in prepared:
            out.append((stitch(all_maps[start : start + len(canvases)], layout), layout))
            start += len(canvases)
        return out

    def score_map(self, work_map: np.ndarray) -> float:
        s = self.config.scoring
        return image_score(work_map, s.image_score, s.top_fraction)

    def _inspection(self, work_map: np.ndarray, layout: Layout) -> Inspection:
        cal = self.calibration
        score = self.score_map(work_map)
        (oh, ow), (wh, ww) = layout.original_hw, layout.work_hw
        regions = find_regions(work_map, cal.pixel_threshold, (ow / ww, oh / wh), min_area=self.grid.min_region_area)
        return Inspection(score, cal.threshold, conformal_p_value(score, self._cal_scores),
                          decide(score, cal.threshold), work_map, layout, regions, cal.alpha)

    def inspect(self, images: list[Picture | np.ndarray]) -> list[Inspection]:
        """Score decoded pictures (or (H, W, 3) uint8/float images); needs a calibrated detector."""
        if self.calibration is None:
            raise RuntimeError("detector is not calibrated")
        return [self._inspection(work_map, layout) for work_map, layout in self.maps(images)]

