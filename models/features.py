"""Patch features: multi-scale backbone maps -> one locally aware vector per patch.

Pure tensor functions. Each stage is averaged over a ``pool x pool`` neighbourhood
(local context, as in PatchCore), deeper stages are resized to the finest grid,
and the stages are concatenated; per-channel standardisation uses statistics
fitted on good training patches and stored in the artifact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from models.sae import patch_error


def to_device(canvases: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) float RGB canvases -> the same as a float32 tensor on `device`: one transfer per batch,
    from pinned memory without blocking on CUDA."""
    x = torch.from_numpy(np.ascontiguousarray(canvases, dtype=np.float32))
    return x.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else x.to(device)


def normalize_canvases(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 3, H, W) normalised with the backbone's (1, 3, 1, 1) mean and std."""
    return (x.permute(0, 3, 1, 2) - mean) / std


def to_batch(canvases: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
             device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) float RGB in [0, 1] -> normalised (N, 3, H, W) tensor on `device`."""
    x = to_device(canvases, device)
    return normalize_canvases(x, torch.tensor(mean, device=x.device).view(1, 3, 1, 1),
                              torch.tensor(std, device=x.device).view(1, 3, 1, 1))


def patch_features(maps: list[torch.Tensor], pool: int, context: int = 0) -> torch.Tensor:
    """List of (N, C_i, H_i, W_i), finest first -> (N, sum C_i, H_0, W_0) float32, or with `context` > 1
    (N, 2 sum C_i, H_0, W_0): each patch's vector followed by the mean of its context x context
    neighbourhood, so the SAE learns which patches go with which surroundings."""
    size = maps[0].shape[-2:]
    out = []
    for m in maps:
        m = m.float()
        if pool > 1:
            m = F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        out.append(m)
    f = torch.cat(out, dim=1)
    if context > 1:
        f = torch.cat([f, F.avg_pool2d(f, context, stride=1, padding=context // 2, count_include_pad=False)], 1)
    return f


def scored_error(f: torch.Tensor, rebuilt: torch.Tensor, error: str) -> torch.Tensor:
    """(..., C) patch features and their reconstruction -> (...) mean squared error over the part `error` names:
    all of it, or for 'patch' the patch's own first half (the context mean `patch_features` appends left out)."""
    keep = f.shape[-1] // 2 if error == "patch" else f.shape[-1]
    return patch_error(f[..., :keep], rebuilt[..., :keep])


def extract_features(backbone: torch.nn.Module, canvases: np.ndarray, mean: tuple[float, ...],
                     std: tuple[float, ...], pool: int, device: torch.device, context: int) -> torch.Tensor:
    """(N, S, S, 3) canvases -> raw (N, h, w, C) patch features (fp32 on every device: see models.config.PRECISION)."""
    return backbone_features(backbone, to_batch(canvases, mean, std, device), pool, context)


def backbone_features(backbone: torch.nn.Module, x: torch.Tensor, pool: int, context: int) -> torch.Tensor:
    """Normalised (N, 3, S, S) batch -> raw (N, h, w, C) patch features, in fp32 on every device."""
    with record_function("backbone"):
        maps = backbone(x)
    return patch_features(maps, pool, context).permute(0, 2, 3, 1)


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(..., C) features -> per-channel standardised features."""
    return (x - mean) / std


def fit_standardization(x: torch.Tensor, rel_floor: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) patches -> per-channel mean and std. Each std is floored at `rel_floor` x the median channel
    std (relative, not absolute): a channel that is near-constant on good parts would otherwise turn any
    tiny change into a huge standardised value and dominate the score. A single patch gives std 0 -> the
    floor (never NaN)."""
    x = x.double()
    std = x.std(0) if len(x) > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
    floor = rel_floor * float(std.median()) if float(std.median()) > 0 else 1.0
    return x.mean(0).float(), std.clamp_min(floor).float()
