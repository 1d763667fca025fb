"""The detector: backbone + patch features + SAE + calibration, rebuilt from one artifact.

Training, the CLI and the service all score through ``Detector.inspect``, so the
three can never disagree on preprocessing or scoring.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from models.artifact import ArtifactError, load_artifact, save_artifact
from models.backbone import Backbone
from models.config import ModelConfig
from models.explain import Atlas, RegionExplanation, box_cells, explain_region
from models.features import extract_features, standardize
from models.preprocess import Layout, make_canvases, stitch, valid_cells
from models.sae import TopKSAE, patch_error
from models.scoring import Region, anomaly_maps, conformal_p_value, find_regions, image_score


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


class Inspection(NamedTuple):
    score: float
    threshold: float
    p_value: float
    anomalous: bool
    anomaly_map: np.ndarray
    """(work_h, work_w) float32 map on the scaled image; see ``layout``."""
    layout: Layout
    regions: list[Region]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=8)
def shared_backbone(name: str, stages: tuple[int, ...], weights: str | None, device: str) -> Backbone:
    """Backbones are frozen, so models with the same one share a single copy."""
    return Backbone(name, stages, weights).to(device)


@functools.lru_cache(maxsize=8)
def _sha256_cached(backbone: Backbone) -> str:
    return backbone.weights_sha256


class Detector:
    def __init__(self, config: ModelConfig, backbone: Backbone, feat_mean: torch.Tensor,
                 feat_std: torch.Tensor, sae: TopKSAE, calibration: Calibration | None = None,
                 meta: dict[str, Any] | None = None, batch_size: int = 16, atlas: Atlas | None = None):
        self.config, self.backbone = config, backbone
        self.device = next(iter(sae.parameters())).device
        self.feat_mean, self.feat_std = feat_mean.to(self.device), feat_std.to(self.device)
        self.sae = sae.eval().requires_grad_(False)
        self.calibration, self.meta = calibration, dict(meta or {})
        self.batch_size = batch_size
        self.atlas = atlas

    # ---- artifact -------------------------------------------------------------------
    @classmethod
    def from_artifact(cls, path: str | Path, device: str = "auto",
                      backbone_weights: str | None = None) -> Detector:
        cfg_dict, meta, tensors = load_artifact(path)
        try:
            config = ModelConfig.from_dict(cfg_dict)
            dev = resolve_device(device)
            backbone = shared_backbone(config.backbone.name, config.backbone.stages,
                                       backbone_weights, str(dev))
            expected = meta.get("backbone_sha256", "")
            if expected and _sha256_cached(backbone) not in ("", expected):
                raise ArtifactError(
                    f"{path}: trained on backbone weights {expected[:12]}…, but the installed "
                    f"{config.backbone.name} weights are {_sha256_cached(backbone)[:12]}…")
            w_dec = tensors["sae.W_dec"]
            sae = TopKSAE(w_dec.shape[0], w_dec.shape[1], config.sae.k)
            sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
            calib = Calibration(**{**meta["calibration"], "scores": tuple(meta["calibration"]["scores"])}) \
                if meta.get("calibration") else None
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{path}: inconsistent artifact ({type(e).__name__}: {e})") from e
        if w_dec.shape[0] != tensors["feat_mean"].numel():
            raise ArtifactError(f"{path}: SAE input size does not match the feature statistics")
        return cls(config, backbone, tensors["feat_mean"], tensors["feat_std"], sae.to(dev), calib, meta,
                   atlas=Atlas.from_tensors(tensors))

    def save(self, path: str | Path) -> str:
        tensors = {"feat_mean": self.feat_mean, "feat_std": self.feat_std}
        tensors |= {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        if self.atlas is not None:
            tensors |= self.atlas.tensors()
        meta = dict(self.meta)
        meta["calibration"] = asdict(self.calibration) if self.calibration else None
        meta["backbone_sha256"] = _sha256_cached(self.backbone)
        return save_artifact(path, self.config.to_dict(), meta, tensors)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    # ---- maths ----------------------------------------------------------------------
    def features(self, canvases: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) canvases -> standardised (N, h, w, C) patch features."""
        cfg = self.config
        f = extract_features(self.backbone, canvases, cfg.backbone.mean, cfg.backbone.std,
                             cfg.scoring.pool, self.device)
        return standardize(f, self.feat_mean, self.feat_std)

    @torch.inference_mode()
    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) canvases -> (N, S, S) smoothed anomaly maps, in batches."""
        out = []
        for i in range(0, len(canvases), self.batch_size):
            f = self.features(canvases[i : i + self.batch_size])  # (B, h, w, C)
            err = patch_error(f, self.sae(f.flatten(0, 2)).x_hat.view_as(f))  # (B, h, w)
            out.append(anomaly_maps(err, self.config.preprocess.size, self.config.scoring.sigma).cpu())
        return torch.cat(out).numpy()

    def maps(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, Layout]]:
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

    @property
    def _min_region_area(self) -> int:
        """Regions smaller than a quarter of a feature cell are smoothing noise, not defects."""
        stride = 2 ** (min(self.config.backbone.stages) + 1)
        return stride * stride // 4

    def score_map(self, work_map: np.ndarray) -> float:
        s = self.config.scoring
        return image_score(work_map, s.image_score, s.top_fraction)

    def _calibration_scores(self) -> np.ndarray:
        """Sorted calibration scores as an array, converted once per calibration, not per image."""
        if getattr(self, "_scores_for", None) is not self.calibration:
            self._scores_for, self._scores = self.calibration, np.asarray(self.calibration.scores)
        return self._scores

    def _inspection(self, work_map: np.ndarray, layout: Layout) -> Inspection:
        cal = self.calibration
        score = self.score_map(work_map)
        (oh, ow), (wh, ww) = layout.original_hw, layout.work_hw
        regions = find_regions(work_map, cal.pixel_threshold, (ow / ww, oh / wh), min_area=self._min_region_area)
        return Inspection(score, cal.threshold, conformal_p_value(score, self._calibration_scores()),
                          bool(score > cal.threshold) if math.isfinite(cal.threshold) else False,
                          work_map, layout, regions)

    def inspect(self, images: list[np.ndarray]) -> list[Inspection]:
        """Score decoded (H, W, 3) float images; needs a calibrated detector."""
        if self.calibration is None:
            raise RuntimeError("detector is not calibrated")
        return [self._inspection(work_map, layout) for work_map, layout in self.maps(images)]

    @torch.inference_mode()
    def explain(self, image: np.ndarray, max_regions: int = 3) -> tuple[Inspection, list[RegionExplanation]]:
        """Inspect one image and explain its anomalous regions (or its peak when none) with the atlas."""
        if self.atlas is None or self.calibration is None:
            raise RuntimeError("this artifact has no latent atlas; refit it to get explanations")
        cfg = self.config
        size, stride = cfg.preprocess.size, 2 ** (min(cfg.backbone.stages) + 1)
        canvases, layout = make_canvases(image, cfg.preprocess)
        f = self.features(canvases)  # (B, h, w, C)
        z, _ = self.sae.encode(f.flatten(0, 2))
        z = z.view(*f.shape[:3], -1)  # (B, h, w, n)
        err = patch_error(f, self.sae.decode(z.flatten(0, 2)).view_as(f))  # (B, h, w)
        maps = anomaly_maps(err, size, cfg.scoring.sigma).cpu().numpy()
        result = self._inspection(stitch(maps, layout), layout)
        found = find_regions(result.anomaly_map, self.calibration.pixel_threshold, (1.0, 1.0), max_regions,
                             self._min_region_area)
        boxes = [(r.x, r.y, r.width, r.height) for r in found]
        if not boxes:
            py, px = np.unravel_index(int(result.anomaly_map.argmax()), result.anomaly_map.shape)
            boxes = [(max(0, px - stride // 2), max(0, py - stride // 2), stride, stride)]
        valid = valid_cells(layout, size, stride)
        (oh, ow), (wh, ww) = layout.original_hw, layout.work_hw
        out = []
        for x, y, w, h in boxes:
            cy, cx = y + h / 2, x + w / 2
            ci = next((i for i, (wy, wx, hh, wd) in enumerate(layout.windows)
                       if wy <= cy < wy + hh and wx <= cx < wx + wd), 0)
            cells = box_cells((x, y, w, h), layout.windows[ci], size, stride, layout.offset)
            total = float(err[ci][torch.from_numpy(valid[ci]).to(err.device)].sum())
            box = (round(x * ow / ww), round(y * oh / wh), max(1, round(w * ow / ww)), max(1, round(h * oh / wh)))
            out.append(explain_region(z[ci].cpu(), err[ci].cpu(), cells, total, self.atlas, size // stride, box))
        return result, out
