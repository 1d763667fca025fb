"""Build the latent atlas at fit time: firing statistics and good-image crops per SAE latent."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.config import ModelConfig
from models.explain import GRID, Atlas, grid_index
from models.geometry import FeatureGrid
from models.imageio import ImageDecodeError, read_image
from models.preprocess import make_canvases

log = logging.getLogger(__name__)


@torch.no_grad()
def latent_statistics(values: torch.Tensor, indices: torch.Tensor, n: int, grid_cells: np.ndarray,
                      per_latent: int) -> tuple[Atlas, torch.Tensor, torch.Tensor]:
    """Firing statistics of `n` latents from the (N, k) active latents of N good patches (values, indices).

    grid_cells: (N, 2) atlas-grid row/col of each patch. Returns an atlas without crops, and the
    (per_latent, n) largest activations of each latent with their patch rows (-1 where it fired on fewer
    patches). Computed on the N k active entries only, never on a dense (N, n) code matrix.
    """
    fired = values > 0
    rows = torch.arange(len(values)).unsqueeze(1).expand_as(indices)[fired]
    lat, act = indices[fired], values[fired]
    count = torch.bincount(lat, minlength=n).float()
    act_sum = torch.zeros(n).index_add_(0, lat, act)
    act_max = torch.zeros(n).scatter_reduce_(0, lat, act, "amax")
    flat = torch.from_numpy(grid_cells[:, 0] * GRID + grid_cells[:, 1]).long()
    cell_count = torch.bincount(flat, minlength=GRID * GRID).float()
    loc = torch.bincount(lat * GRID * GRID + flat[rows], minlength=n * GRID * GRID).float().view(n, GRID * GRID)
    order = act.argsort(descending=True, stable=True)
    order = order[lat[order].argsort(stable=True)]  # by latent, largest activation first
    rank = torch.arange(len(order)) - (torch.cumsum(count, 0) - count).long()[lat[order]]  # place in its latent
    keep = order[rank < per_latent]
    slot = rank[rank < per_latent]
    top_v = torch.full((per_latent, n), -1.0).index_put_((slot, lat[keep]), act[keep])
    top_i = torch.zeros(per_latent, n, dtype=torch.long).index_put_((slot, lat[keep]), rows[keep])
    atlas = Atlas(freq=count / len(values), mean_act=act_sum / count.clamp_min(1), max_act=act_max,
                  loc_freq=(loc / cell_count.clamp_min(1)).view(n, GRID, GRID),
                  crops=torch.zeros(0, dtype=torch.uint8))
    return atlas, top_v, top_i


def build_atlas(values: torch.Tensor, indices: torch.Tensor, n_latents: int, tags: np.ndarray,
                paths: Sequence[Path], config: ModelConfig, per_latent: int = 2, crop: int = 24) -> Atlas:
    """Statistics of the good patches' active latents (values, indices: (N, k)) plus, per latent,
    `per_latent` crop x crop good-image patches where it fires most."""
    grid = FeatureGrid.of(config)
    stats, top_v, top_i = latent_statistics(values, indices, n_latents, grid_index(tags[:, 2:4], grid.cells),
                                            per_latent)
    crops = np.zeros((n_latents, per_latent, crop, crop, 3), np.uint8)
    wanted: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # image -> (latent, slot, row)
    for slot in range(per_latent):
        for j in torch.nonzero(top_v[slot] > 0).flatten().tolist():
            row = int(top_i[slot, j])
            wanted[int(tags[row, 0])].append((j, slot, row))
    half = crop // 2
    for img_idx, items in wanted.items():
        try:
            canvases, _ = make_canvases(read_image(paths[img_idx], config.preprocess), config.preprocess)
        except ImageDecodeError as e:  # the file changed since extraction
            log.warning("atlas: %s", e)
            continue
        padded = np.pad((canvases * 255).astype(np.uint8), ((0, 0), (half, half), (half, half), (0, 0)),
                        mode="reflect")
        for j, slot, row in items:
            _, ci, gy, gx = (int(v) for v in tags[row])
            cy, cx = grid.centre_pixel(gy) + half, grid.centre_pixel(gx) + half
            crops[j, slot] = padded[ci, cy - half : cy + half, cx - half : cx + half]
    return Atlas(stats.freq, stats.mean_act, stats.max_act, stats.loc_freq, torch.from_numpy(crops))
