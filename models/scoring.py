"""Pure tensor functions from patch errors to anomaly maps and per-position statistics (the decision
itself, numpy only, is ``models.decision``)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1-D Gaussian truncated at 4 sigma (as scipy and PatchCore do): (2 * ceil(4 sigma) + 1,)."""
    half = math.ceil(4 * sigma)
    x = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def reference_maps(errors: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """The definition of the map: (N, h, w) patch errors -> bilinear upsampling to (size, size), then a
    2-D Gaussian (truncated at 4 sigma, reflected borders). Slow; ``anomaly_maps`` computes the same."""
    from torchvision.transforms.functional import gaussian_blur

    maps = F.interpolate(errors[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        ksize = len(gaussian_kernel1d(sigma))
        maps = gaussian_blur(maps, [ksize, ksize], [sigma, sigma])
    return maps[:, 0]


@functools.lru_cache(maxsize=16)
def map_operator(cells: int, size: int, sigma: float, device: str = "cpu") -> torch.Tensor:
    """(size, cells) matrix A with reference_maps(E) = A @ E @ A.T: bilinear upsampling and reflected
    Gaussian smoothing are both linear and separable, so they fold into one small matrix per axis."""
    eye = torch.eye(cells)[:, None]  # each grid position as a 1-D signal: (cells, 1, cells)
    up = F.interpolate(eye, size=size, mode="linear", align_corners=False)  # (cells, 1, size)
    if sigma > 0:
        k = gaussian_kernel1d(sigma)
        up = F.conv1d(F.pad(up, (len(k) // 2, len(k) // 2), mode="reflect"), k.view(1, 1, -1))
    return up[:, 0].t().contiguous().to(device)


def anomaly_maps(errors: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(N, h, w) patch errors -> (N, size, size) maps: ``reference_maps`` as two small matrix products
    on the feature grid (h x w), never a convolution at canvas resolution."""
    return apply_map_operator(map_operator(errors.shape[-1], size, float(sigma), str(errors.device)), errors)


def apply_map_operator(a: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """(S, h) operator, (N, h, h) patch scores -> (N, S, S) maps."""
    return a @ errors.float() @ a.t()


def fit_position_stats(values: torch.Tensor, cells: torch.Tensor, n_cells: int, min_count: int = 8,
                       floor: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell mean and std of a patch statistic on good images.

    values: (N,) one value per good patch; cells: (N, 2) its row/col on the n_cells x n_cells
    feature grid. Cells seen fewer than `min_count` times take the global mean and std; every
    std is floored at `floor` x the global std so that a cell where good parts never vary
    cannot turn noise into a huge z-score. -> (n_cells, n_cells) mean, (n_cells, n_cells) std.
    """
    v = values.double()
    flat = (cells[:, 0] * n_cells + cells[:, 1]).long()
    count = torch.bincount(flat, minlength=n_cells * n_cells).double()
    total = torch.bincount(flat, v, minlength=n_cells * n_cells)
    total_sq = torch.bincount(flat, v * v, minlength=n_cells * n_cells)
    mean = total / count.clamp_min(1)
    var = (total_sq / count.clamp_min(1) - mean**2).clamp_min(0) * count / (count - 1).clamp_min(1)
    g_mean = v.mean()
    g_std = v.std() if len(v) > 1 else v.new_zeros(())
    if not float(g_std) > 0:  # one sample, or no variation at all: a unit scale rather than NaN or 1e-12
        g_std = torch.maximum(g_mean.abs(), v.new_ones(()))
    few = count < min_count
    mean = torch.where(few, g_mean, mean)
    std = torch.where(few, g_std, var.sqrt()).clamp_min(floor * float(g_std))
    return mean.view(n_cells, n_cells).float(), std.view(n_cells, n_cells).float()


def normalize_positions(errors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, h, w) patch errors -> z-scores against the good-image statistics of each position."""
    return (errors - mean) / std


def latent_rarity(counts: torch.Tensor, seen: torch.Tensor, prior: float = 10.0, eps: float = 1e-3) -> torch.Tensor:
    """How unusual each latent is at each position of good products: -log(firing rate).

    counts: (P, n) how often each latent fired at each of P positions on good patches;
    seen: (P,) good patches seen at each position. The rate at a position is shrunk towards
    the latent's global rate with `prior` pseudo-patches, so a position seen rarely does not
    call every latent novel. -> (P, n).
    """
    counts, seen = counts.double(), seen.double()[:, None]
    rate_global = counts.sum(0) / seen.sum().clamp_min(1)
    rate = (counts + prior * rate_global) / (seen + prior)
    return (-torch.log(rate + eps)).float()


def latent_novelty(values: torch.Tensor, indices: torch.Tensor, rarity: torch.Tensor) -> torch.Tensor:
    """Activation-weighted mean rarity of the latents that fire: high where a patch uses atoms good
    products never use there. values, indices: (..., k) the active latents of each patch; rarity:
    (..., n) of each patch's position, broadcastable to the patches (e.g. (h, w, n)). -> (...)."""
    picked = rarity.expand(*values.shape[:-1], rarity.shape[-1]).gather(-1, indices)
    return (values * picked).sum(-1) / values.sum(-1).clamp_min(1e-6)
