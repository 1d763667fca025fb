"""The scoring network: canvases -> anomaly maps as one torch module.

``Detector.canvas_pass`` runs it and ``sae-inspect export`` traces it to ONNX, so the service,
the CLI and an exported model compute the same thing. Everything it needs (backbone
normalisation, feature statistics, per-position score statistics, the map operator) is a
buffer of the module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.profiler import record_function

from models.backbone import Backbone
from models.config import ModelConfig
from models.features import backbone_features, normalize_canvases, scored_error, standardize
from models.geometry import FeatureGrid
from models.sae import TopKSAE
from models.scoring import apply_map_operator, latent_novelty, map_operator, normalize_positions

ENCODE_ROWS = 8192
"""Patches per encoder product in PyTorch (``TopKSAE.encode_topk``; the ONNX export traces one product). A cProfile
of the scoring choice on tire at 640 px (240 images, batches of 16 canvases: 102,400 patches) spent 26.4 s in the
encoder's product with whole batches and 17.2 s in blocks of 8192; blocks of 1024 to 16384 timed alike on 51,200
random patches. Its effect on a whole fit: bench/results/fit_time.md."""


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


class ScoringNet(nn.Module):
    """(N, S, S, 3) canvases in [0, 1] -> (maps (N, S, S), patch errors (N, h, w), active latents'
    values and indices (N, h, w, k))."""

    def __init__(self, config: ModelConfig, backbone: Backbone, feat_mean: torch.Tensor, feat_std: torch.Tensor,
                 sae: TopKSAE, stats: ScoreStats | None):
        super().__init__()
        self.backbone, self.sae = backbone, sae
        self.normalize, self.pool, self.context = config.scoring.normalize, config.scoring.pool, config.scoring.context
        self.error = config.scoring.error
        device = feat_mean.device
        self.register_buffer("mean", torch.tensor(config.backbone.mean, device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.backbone.std, device=device).view(1, 3, 1, 1))
        self.register_buffer("feat_mean", feat_mean)
        self.register_buffer("feat_std", feat_std)
        cells = FeatureGrid.of(config).cells
        self.register_buffer("operator", map_operator(cells, config.preprocess.size, float(config.scoring.sigma),
                                                      str(device)))
        self.stats = stats
        self.portable = False
        """Set by the ONNX exporter: decode with ops every runtime has (same result, slower in torch)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) canvases -> standardised (N, h, w, C) patch features."""
        f = backbone_features(self.backbone, normalize_canvases(x, self.mean, self.std), self.pool,
                              self.context)
        return standardize(f, self.feat_mean, self.feat_std)

    def score_maps(self, err: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                   normalize: str) -> torch.Tensor:
        """(B, h, w) patch errors and (B, h, w, k) active latents -> (B, S, S) smoothed maps of one scoring."""
        return apply_map_operator(self.operator, patch_score(err, values, indices, normalize, self.stats))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with record_function("features"):  # stage labels for torch.profiler (bench/cost.py); free otherwise
            f = self.features(x)  # (B, h, w, C)
        with record_function("sae_encode"):
            values, indices = self.sae.encode_topk(f.flatten(0, 2), None if self.portable else ENCODE_ROWS)
        with record_function("sae_decode"):
            rebuilt = self.sae.decode_topk(values, indices, self.portable).view_as(f)
            err = scored_error(f, rebuilt, self.error)  # (B, h, w)
        with record_function("maps"):
            values, indices = values.view(*f.shape[:3], -1), indices.view(*f.shape[:3], -1)
            maps = self.score_maps(err, values, indices, self.normalize)
        return maps, err, values, indices
