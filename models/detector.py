"""The detector: backbone + patch features + SAE + calibration, rebuilt from one artifact.

Training, the CLI, explanations and the service all go through ``Detector.canvas_pass``
(canvases -> maps), so they can never disagree on preprocessing or scoring.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch

from models.artifact import ArtifactError, load_artifact, save_artifact
from models.backbone import Backbone
from models.backbone_runtime import offline_backbone
from models.config import NORMALIZE_CHOICES, PRECISION, ModelConfig
from models.explain import Atlas, RegionExplanation, explain_regions
from models.features import to_device
from models.geometry import FeatureGrid
from models.inspection import Calibration, Inspection, Scorer
from models.net import ScoreStats, ScoringNet
from models.preprocess import Picture, make_canvases, stitch
from models.sae import TopKSAE


class CanvasPass(NamedTuple):
    maps: torch.Tensor
    """(B, S, S) smoothed anomaly maps (CPU)."""
    err: torch.Tensor
    """(B, h, w) raw patch errors on the feature grid (before any normalisation)."""
    values: torch.Tensor
    """(B, h, w, k) activations of the k latents active at each patch."""
    indices: torch.Tensor
    """(B, h, w, k) which latents they are."""


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


class Detector(Scorer):
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
        if config.scoring.normalize in NORMALIZE_CHOICES:
            fields["net"] = ScoringNet(config, backbone, fields["feat_mean"], fields["feat_std"], fields["sae"],
                                       fields["score_stats"]).eval()
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

    def offline(self) -> Detector:
        """The same detector with its backbone in the fastest runtime checked equal to it on this device
        (``models.backbone_runtime``: ONNX Runtime on CPU), for offline passes over many images (fit,
        calibration, evaluation). Saving it saves the same artifact."""
        return self.replace(backbone=offline_backbone(self.backbone, self.config.preprocess.size,
                                                      str(self.device)).module)

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
            if meta.get("precision") != PRECISION:
                raise ArtifactError(f"{path}: calibrated in precision {meta.get('precision')!r}, but this build "
                                    f"scores in {PRECISION!r}: its threshold would not hold; refit the model")
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
        meta["precision"] = PRECISION
        return save_artifact(path, self.config.to_dict(), meta, tensors)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    # ---- maths: one path from canvases to maps --------------------------------------
    @torch.inference_mode()
    def features(self, canvases: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) canvases -> standardised (N, h, w, C) patch features."""
        return self.net.features(to_device(canvases, self.device))

    @torch.inference_mode()
    def canvas_pass(self, canvases: np.ndarray) -> CanvasPass:
        """(B, S, S, 3) canvases -> maps, patch errors and sparse codes: the one scoring path
        (``models.net.ScoringNet``, which the ONNX export also traces)."""
        if self.config.scoring.normalize not in NORMALIZE_CHOICES:
            raise RuntimeError(f"scoring normalisation {self.config.scoring.normalize!r} is not resolved; "
                               "fit_calibrated picks it")
        maps, err, values, indices = self.net(to_device(canvases, self.device))
        return CanvasPass(maps.cpu(), err, values, indices)

    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) canvases -> (N, S, S) smoothed anomaly maps, in batches."""
        out = [self.canvas_pass(canvases[i : i + self.batch_size]).maps
               for i in range(0, len(canvases), self.batch_size)]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def candidate_canvas_maps(self, canvases: np.ndarray, normalizations: tuple[str, ...]) -> np.ndarray:
        """(N, S, S, 3) canvases -> (N, S, S, C) maps of each scoring in `normalizations`, from one pass of
        the backbone and the SAE (what a scoring choice compares; the same maps ``with_scoring`` gives)."""
        out = []
        for i in range(0, len(canvases), self.batch_size):
            _, err, values, indices = self.net(to_device(canvases[i : i + self.batch_size], self.device))
            out.append(torch.stack([self.net.score_maps(err, values, indices, n) for n in normalizations], -1).cpu())
        return torch.cat(out).numpy()

    def explain(self, image: Picture | np.ndarray, max_regions: int = 3) -> tuple[Inspection, list[RegionExplanation]]:
        """Inspect one image and explain its anomalous regions (or its peak when none) with the atlas
        (``models.explain.explain_regions``), from the one canvas pass that scores it."""
        if self.atlas is None or self.calibration is None:
            raise RuntimeError("this artifact has no latent atlas; refit it to get explanations")
        canvases, layout = make_canvases(image, self.config.preprocess)
        passes = [self.canvas_pass(canvases[i : i + self.batch_size])
                  for i in range(0, len(canvases), self.batch_size)]
        maps = torch.cat([p.maps for p in passes]).numpy()
        err = torch.cat([p.err for p in passes]).cpu()  # (N, h, w)
        z = TopKSAE.densify(torch.cat([p.values for p in passes]), torch.cat([p.indices for p in passes]),
                            self.sae.n_latents).cpu()  # (N, h, w, n)
        result = self._inspection(stitch(maps, layout), layout)
        return result, explain_regions(result.anomaly_map, err, z, layout, self.grid, self.atlas,
                                       self.calibration.pixel_threshold, max_regions)
