"""Why an image was flagged: which dictionary atoms fire in the anomalous region.

At fit time the trainer records, per SAE latent, how often and how strongly it fires
on good patches, where on the canvas it fires (an 8 x 8 grid), and a few good-image
crops where it fires most (the atlas, bounded: latents x crops_per_latent x crop^2 x 3
bytes). At inspection, for each anomalous region:

* ``error_share``: the region's part of the image's total reconstruction error;
* ``unusual``: latents firing in the region far more often than on good products
  (``never_seen`` when above anything seen on good products);
* ``expected``: the latents good products use at this place on the canvas, with their
  atlas crops ("what should be here");
* ``novelty`` (activation mass on rare / never-seen latents) vs ``misplacement``
  (mass on latents common in good products but not at this place): the region looks
  like nothing in good products (``kind="novel"``) or like a different part of good
  products (``kind="misplaced"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from models.decision import find_regions
from models.geometry import FeatureGrid
from models.preprocess import Layout, valid_cells

RARE = 1e-3  # a latent firing on fewer than 0.1% of good patches is "rare"
GRID = 8


@dataclass(frozen=True)
class Atlas:
    freq: torch.Tensor  # (n,) fraction of good patches where the latent is active
    mean_act: torch.Tensor  # (n,) mean activation when active
    max_act: torch.Tensor  # (n,) largest activation on good patches
    loc_freq: torch.Tensor  # (n, GRID, GRID) firing frequency by canvas position
    crops: torch.Tensor  # (n, m, c, c, 3) uint8 good-image crops where the latent fires most

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"atlas.{k}": getattr(self, k) for k in ("freq", "mean_act", "max_act", "loc_freq", "crops")}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Atlas | None:
        if "atlas.freq" not in t:
            return None
        return cls(*(t[f"atlas.{k}"] for k in ("freq", "mean_act", "max_act", "loc_freq", "crops")))


class LatentEvidence(NamedTuple):
    latent: int
    region_rate: float
    """Fraction of the region's patches where the latent fires."""
    good_rate: float
    """Fraction of good patches (anywhere) where it fires."""
    activation: float
    """Mean activation in the region where it fires."""
    good_max_activation: float
    never_seen: bool


class RegionExplanation(NamedTuple):
    box: tuple[int, int, int, int]
    """x, y, width, height in original-image pixels."""
    error_share: float
    kind: str
    """'novel' (looks like nothing in good products) or 'misplaced' (like another part of them)."""
    novelty: float
    misplacement: float
    unusual: list[LatentEvidence]
    expected: list[tuple[int, float]]
    """(latent, firing rate at this place in good products), most typical first."""


def grid_index(cells: np.ndarray, n_cells: int) -> np.ndarray:
    """Cell coordinates (k, 2) on an n x n feature grid -> coordinates on the GRID x GRID atlas grid."""
    return np.minimum(cells * GRID // n_cells, GRID - 1)


def explain_region(z: torch.Tensor, err: torch.Tensor, cells: np.ndarray, total_error: float, atlas: Atlas,
                   n_cells: int, box: tuple[int, int, int, int], top: int = 5) -> RegionExplanation:
    """Explain one region from its patches' latents.

    z: (h, w, n) sparse latents of the canvas; err: (h, w) patch errors;
    cells: (k, 2) row/col of the region's cells on that grid.
    """
    rz = z[cells[:, 0], cells[:, 1]].float()  # (k, n)
    active = rz > 0
    region_rate = active.float().mean(0)  # (n,)
    act_sum = rz.sum(0)
    mean_act = act_sum / active.sum(0).clamp_min(1)
    freq = atlas.freq.float()
    never = (active & (rz > atlas.max_act.float())).any(0) | ((freq == 0) & active.any(0))
    rare = (freq < RARE) | never
    g = grid_index(cells, n_cells)
    here = atlas.loc_freq[:, g[:, 0], g[:, 1]].float().mean(1)  # (n,) rate at this place in good products
    misplaced = ~rare & (here < 0.1 * freq)
    mass = act_sum.sum().clamp_min(1e-12)
    novelty = float(act_sum[rare].sum() / mass)
    misplacement = float(act_sum[misplaced].sum() / mass)
    ratio = region_rate / (freq + 1e-4)
    order = torch.argsort(ratio, descending=True)
    unusual = [LatentEvidence(int(j), float(region_rate[j]), float(freq[j]), float(mean_act[j]),
                              float(atlas.max_act[j]), bool(never[j]))
               for j in order[:top] if region_rate[j] > 0]
    expected = [(int(j), float(here[j])) for j in torch.argsort(here, descending=True)[:top] if here[j] > 0]
    share = float(err[cells[:, 0], cells[:, 1]].sum()) / max(total_error, 1e-12)
    kind = "misplaced" if misplacement > max(novelty, 0.25) else "novel"
    return RegionExplanation(box, share, kind, novelty, misplacement, unusual, expected)


def box_cells(box_work: tuple[int, int, int, int], window: tuple[int, int, int, int], grid: FeatureGrid,
              offset: int = 0) -> np.ndarray:
    """Feature cells (k, 2) of one canvas whose centres fall inside a work-image box (x, y, w, h).

    `window` is the canvas's (y, x, h, w) on the work image; its valid part starts `offset`
    pixels into the canvas.
    """
    x, y, w, h = box_work
    wy, wx, wh, ww = window
    c = grid.centres(offset)  # cell centres relative to the valid part
    rows = np.nonzero((c + wy >= y) & (c + wy < y + h) & (c >= 0) & (c < wh))[0]
    cols = np.nonzero((c + wx >= x) & (c + wx < x + w) & (c >= 0) & (c < ww))[0]
    if len(rows) == 0 or len(cols) == 0:  # a box thinner than a cell: take the nearest cell
        return np.array([[grid.cell_of(y + h / 2 - wy, offset), grid.cell_of(x + w / 2 - wx, offset)]])
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def atlas_png(atlas: Atlas, latent: int) -> list[bytes]:
    """The latent's good-image crops as PNG files (empty slots skipped)."""
    import cv2

    out = []
    for c in atlas.crops[latent].numpy():
        if c.any():
            ok, png = cv2.imencode(".png", np.ascontiguousarray(c[..., ::-1]))
            if ok:
                out.append(png.tobytes())
    return out


def explain_regions(anomaly_map: np.ndarray, err: torch.Tensor, z: torch.Tensor, layout: Layout,
                    grid: FeatureGrid, atlas: Atlas, pixel_threshold: float,
                    max_regions: int = 3) -> list[RegionExplanation]:
    """The anomalous regions of one image's map (or its peak when none), each explained with the atlas.

    `anomaly_map`: the stitched (work_h, work_w) map; `err`: (N, h, w) patch errors and `z`: (N, h, w, n) dense
    codes of the image's N canvases (``models.detector.Detector.explain`` computes all three in one pass)."""
    found = find_regions(anomaly_map, pixel_threshold, (1.0, 1.0), max_regions, grid.min_region_area)
    boxes = [(r.x, r.y, r.width, r.height) for r in found]
    if not boxes:
        py, px = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
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
        out.append(explain_region(z[ci], err[ci], cells, total, atlas, grid.cells, box))
    return out
