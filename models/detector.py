"""The detector: backbone + patch features + SAE + calibration, rebuilt from one artifact.

Training, the CLI, explanations and the service all go through ``Detector.canvas_pass``
(canvases -> maps), so they can never disagree on preprocessing or scoring.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.profiler import record_function

from models.artifact import ArtifactError, load_artifact, save_artifact
from models.backbone import Backbone
from models.config import NORMALIZE_CHOICES, ModelConfig
from models.explain import Atlas, RegionExplanation, box_cells, explain_region
from models.features import extract_features, standardize
from models.geometry import FeatureGrid
from models.imageio import DEFAULT_MAX_PIXELS, decode_image, read_image
from models.preprocess import Layout, Picture, make_canvases, stitch, valid_cells
from models.sae import TopKSAE, patch_error
from models.scoring import (
    Region,
    anomaly_maps,
    conformal_p_value,
    find_regions,
    image_score,
    latent_novelty,
    normalize_positions,
)


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


class ScoreStats(NamedTuple):
    """What the fit learned from good training patches for scoring, per feature-grid position."""

    err_mean: torch.Tensor  # (cells, cells) patch error
    err_std: torch.Tensor  # (cells, cells)
    rarity: torch.Tensor  # (cells, cells, n) -log firing rate of each latent at each position
    nov_mean: torch.Tensor  # (cells, cells) latent novelty
    nov_std: torch.Tensor  # (cells, cells)

    def to(self, device: torch.device | str) -> ScoreStats:
        return ScoreStats(*(t.to(device) for t in self))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"score.{k}": v for k, v in self._asdict().items()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> ScoreStats | None:
        return cls(*(t[f"score.{k}"] for k in cls._fields)) if "score.err_mean" in t else None


class CanvasPass(NamedTuple):
    maps: torch.Tensor
    """(B, S, S) smoothed anomaly maps (CPU)."""
    err: torch.Tensor
    """(B, h, w) raw patch errors on the feature grid (before any normalisation)."""
    values: torch.Tensor
    """(B, h, w, k) activations of the k latents active at each patch."""
    indices: torch.Tensor
    """(B, h, w, k) which latents they are."""


def patch_score(err: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, normalize: str,
                stats: ScoreStats | None) -> torch.Tensor:
    """(B, h, w) patch errors and (B, h, w, k) active latents -> (B, h, w) anomaly score per patch.

    'none': the raw error; 'position': its z-score against good patches at the same position;
    'position_novelty': that plus the z-score of the latents' novelty at that position.
    """
    if normalize == "none":
        return err
    score = normalize_positions(err, stats.err_mean, stats.err_std)
    if normalize == "position_novelty":
        novelty = latent_novelty(values, indices, stats.rarity)
        score = score + normalize_positions(novelty, stats.nov_mean, stats.nov_std)
    return score


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
    """A fitted detector. Complete when constructed and never changed afterwards: use
    ``replace`` to get a detector that differs (e.g. calibrated); it keeps everything else."""

    _FIELDS = ("config", "backbone", "feat_mean", "feat_std", "sae", "calibration", "meta", "atlas",
               "score_stats", "batch_size")

    def __init__(self, config: ModelConfig, backbone: Backbone, feat_mean: torch.Tensor, feat_std: torch.Tensor,
                 sae: TopKSAE, calibration: Calibration | None = None, meta: Mapping[str, Any] | None = None,
                 atlas: Atlas | None = None, score_stats: ScoreStats | None = None, batch_size: int = 16):
        device = next(iter(sae.parameters())).device
        grid = FeatureGrid.of(config)
        if config.scoring.normalize not in ("none", "auto") and score_stats is None:
            raise ValueError(f"scoring {config.scoring.normalize!r} needs score statistics; the detector has none")
        if score_stats is not None and (tuple(score_stats.err_mean.shape) != (grid.cells, grid.cells)
                                        or score_stats.rarity.shape[-1] != sae.n_latents):
            raise ValueError(f"score statistics of shape {tuple(score_stats.rarity.shape)} do not fit a "
                             f"{grid.cells} x {grid.cells} grid and {sae.n_latents} latents")
        fields = {
            "config": config, "backbone": backbone, "device": device, "grid": grid,
            "score_stats": score_stats.to(device) if score_stats is not None else None,
            "feat_mean": feat_mean.to(device), "feat_std": feat_std.to(device),
            "sae": sae.eval().requires_grad_(False), "calibration": calibration,
            "meta": MappingProxyType(copy.deepcopy(dict(meta or {}))), "atlas": atlas, "batch_size": batch_size,
            "_cal_scores": np.asarray(calibration.scores) if calibration else None,
        }
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Detector is immutable; use detector.replace({name}=...)")

    def replace(self, **changes: Any) -> Detector:
        """A new detector with `changes` applied; every other part (atlas included) is kept."""
        unknown = set(changes) - set(self._FIELDS)
        if unknown:
            raise TypeError(f"unknown Detector fields {sorted(unknown)}")
        return Detector(**{f: changes.get(f, getattr(self, f)) for f in self._FIELDS})

    def with_scoring(self, **changes: Any) -> Detector:
        """The same detector scoring differently (e.g. normalize='none'); calibrate it again before use."""
        scoring = dataclasses.replace(self.config.scoring, **changes)
        return self.replace(config=dataclasses.replace(self.config, scoring=scoring))

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
        meta = {k: v for k, v in meta.items() if k != "calibration"}
        try:
            return cls(config, backbone, tensors["feat_mean"], tensors["feat_std"], sae.to(dev), calib, meta,
                       atlas=Atlas.from_tensors(tensors), score_stats=ScoreStats.from_tensors(tensors))
        except ValueError as e:
            raise ArtifactError(f"{path}: inconsistent artifact ({e})") from e

    def save(self, path: str | Path) -> str:
        tensors = {"feat_mean": self.feat_mean, "feat_std": self.feat_std}
        tensors |= {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        if self.atlas is not None:
            tensors |= self.atlas.tensors()
        if self.score_stats is not None:
            tensors |= self.score_stats.tensors()
        meta = dict(self.meta)
        meta["calibration"] = asdict(self.calibration) if self.calibration else None
        meta["backbone_sha256"] = _sha256_cached(self.backbone)
        return save_artifact(path, self.config.to_dict(), meta, tensors)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    # ---- decoding for this model's geometry ------------------------------------------
    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "image") -> Picture:
        """Image file bytes -> a picture reduced at decode for this model's work image (see models.imageio)."""
        return decode_image(data, self.config.preprocess, max_pixels, source)

    def read(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
        return read_image(path, self.config.preprocess, max_pixels)

    # ---- maths: one path from canvases to maps --------------------------------------
    def features(self, canvases: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) canvases -> standardised (N, h, w, C) patch features."""
        cfg = self.config
        f = extract_features(self.backbone, canvases, cfg.backbone.mean, cfg.backbone.std,
                             cfg.scoring.pool, self.device)
        return standardize(f, self.feat_mean, self.feat_std)

    @torch.inference_mode()
    def canvas_pass(self, canvases: np.ndarray) -> CanvasPass:
        """(B, S, S, 3) canvases -> maps, patch errors and sparse codes: the one scoring path."""
        scoring = self.config.scoring
        if scoring.normalize not in NORMALIZE_CHOICES:
            raise RuntimeError(f"scoring normalisation {scoring.normalize!r} is not resolved; fit_calibrated picks it")
        with record_function("features"):  # stage labels for torch.profiler (bench/cost.py); free otherwise
            f = self.features(canvases)  # (B, h, w, C)
        with record_function("sae_encode"):
            values, indices = self.sae.encode_topk(f.flatten(0, 2))  # (B*h*w, k): only the active latents
        with record_function("sae_decode"):
            err = patch_error(f, self.sae.decode_topk(values, indices).view_as(f))  # (B, h, w)
        with record_function("maps"):
            values, indices = values.view(*f.shape[:3], -1), indices.view(*f.shape[:3], -1)
            maps = anomaly_maps(patch_score(err, values, indices, scoring.normalize, self.score_stats),
                                self.config.preprocess.size, scoring.sigma)
            return CanvasPass(maps.cpu(), err, values, indices)

    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) canvases -> (N, S, S) smoothed anomaly maps, in batches."""
        out = [self.canvas_pass(canvases[i : i + self.batch_size]).maps
               for i in range(0, len(canvases), self.batch_size)]
        return torch.cat(out).numpy()

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
                          bool(score > cal.threshold) if math.isfinite(cal.threshold) else False,
                          work_map, layout, regions)

    def inspect(self, images: list[Picture | np.ndarray]) -> list[Inspection]:
        """Score decoded pictures (or (H, W, 3) uint8/float images); needs a calibrated detector."""
        if self.calibration is None:
            raise RuntimeError("detector is not calibrated")
        return [self._inspection(work_map, layout) for work_map, layout in self.maps(images)]

    def explain(self, image: Picture | np.ndarray, max_regions: int = 3) -> tuple[Inspection, list[RegionExplanation]]:
        """Inspect one image and explain its anomalous regions (or its peak when none) with the atlas."""
        if self.atlas is None or self.calibration is None:
            raise RuntimeError("this artifact has no latent atlas; refit it to get explanations")
        grid = self.grid
        canvases, layout = make_canvases(image, self.config.preprocess)
        passes = [self.canvas_pass(canvases[i : i + self.batch_size])
                  for i in range(0, len(canvases), self.batch_size)]
        maps = torch.cat([p.maps for p in passes]).numpy()
        err = torch.cat([p.err for p in passes]).cpu()  # (N, h, w)
        z = TopKSAE.densify(torch.cat([p.values for p in passes]), torch.cat([p.indices for p in passes]),
                            self.sae.n_latents).cpu()  # (N, h, w, n)
        result = self._inspection(stitch(maps, layout), layout)
        found = find_regions(result.anomaly_map, self.calibration.pixel_threshold, (1.0, 1.0), max_regions,
                             grid.min_region_area)
        boxes = [(r.x, r.y, r.width, r.height) for r in found]
        if not boxes:
            py, px = np.unravel_index(int(result.anomaly_map.argmax()), result.anomaly_map.shape)
            s = grid.stride
            boxes = [(max(0, px - s // 2), max(0, py - s // 2), s, s)]
        valid = torch.from_numpy(valid_cells(layout, grid))
        (oh, ow), (wh, ww) = layout.original_hw, layout.work_hw
        out = []
        for x, y, w, h in boxes:
            cy, cx = y + h / 2, x + w / 2
            ci = next((i for i, (wy, wx, hh, wd) in enumerate(layout.windows)
                       if wy <= cy < wy + hh and wx <= cx < wx + wd), 0)
            cells = box_cells((x, y, w, h), layout.windows[ci], grid, layout.offset)
            total = float(err[ci][valid[ci]].sum())
            box = (round(x * ow / ww), round(y * oh / wh), max(1, round(w * ow / ww)), max(1, round(h * oh / wh)))
            out.append(explain_region(z[ci], err[ci], cells, total, self.atlas, grid.cells, box))
        return result, out
