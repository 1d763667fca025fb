"""The model's canvas side, chosen at fit time from the good images' own sizes: never upsample the typical image.

Letterbox (and resize) scale each image's long side to the canvas side. Where the images are smaller than the
canvas, that upsampling adds no detail; it only makes each stride-8 patch, its 3 x 3 pooling and its 7 x 7 context
cover less of the part, and it costs the pixels of the larger canvas at every inspection. So the fit takes the
largest of ``CANVAS_SIDES`` (at most the config's side) that does not exceed the median long side of the good
images, and the smallest when every side exceeds it. Measured (bench/results/accuracy.md, three fit seeds each): on
magnetic_tile (long sides 266-600 px, median 358) image AUROC 0.950 at 256 px, 0.927 at 384, 0.911 at 512 (AUPRO
the other way: 0.722, 0.781, 0.801); anomalib PaDiM falls with the canvas there too (0.942 / 0.929 / 0.923). The
other three shared sets (640-1130 px) gain from every step up to 512 px, and two of them from 640 px too (a candidate
since 2026-12-04: deeppcb 0.966 against 0.922 at 512 px, tire 0.882 against 0.865, bsdata_pitting 0.966 against
0.968); the rule takes 640 px for them.
The choice and its table are stored in the artifact and shown on the model card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.config import ModelConfig

CANVAS_SIDES = (256, 384, 512, 640)
"""The canvas sides a fit chooses between (the issue's 256 / 384 / 512, and 640 since 2026-12-04), capped by the
config's own side."""
RULE = "the largest canvas side not above the median long side of the good images (never upsample the typical image)"


def long_sides(paths: Sequence[Path]) -> list[int]:
    """Long side in pixels of each readable image, from its header alone (Pillow reads the first bytes; no pixel
    is decoded). Unreadable files are left out here; the fit's image pass names them."""
    sides = []
    for p in paths:
        try:
            with Image.open(p) as img:
                sides.append(max(img.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sides


def candidate_sides(largest: int) -> list[int]:
    """CANVAS_SIDES below `largest`, and `largest` itself, ascending."""
    return sorted({s for s in CANVAS_SIDES if s < largest} | {largest})


def choose_side(sides: Sequence[int], largest: int) -> int:
    """Pure rule: of ``candidate_sides(largest)``, the largest side <= the median of `sides`, or the smallest when
    none is. Never above `largest`; `largest` when `sides` is empty."""
    candidates = candidate_sides(largest)
    if not sides:
        return largest
    median = float(np.median(sides))
    fitting = [s for s in candidates if s <= median]
    return fitting[-1] if fitting else candidates[0]


def choose_canvas(paths: Sequence[Path], config: ModelConfig) -> tuple[ModelConfig, dict[str, Any]]:
    """-> the config with the chosen canvas side, and the table the card shows. Tile mode keeps its side: tiles cut
    the image at its native resolution already."""
    largest = config.preprocess.size
    sides = long_sides(paths)
    chosen = choose_side(sides, largest) if config.preprocess.mode != "tile" else largest
    arr = np.asarray(sides, np.float64)
    table = {"rule": RULE, "chosen": chosen, "largest": largest, "n_images": len(sides),
             "median_long_side": float(np.median(arr)) if len(arr) else None,
             "upsampled_share": {str(s): float(np.mean(arr < s)) if len(arr) else None
                                 for s in candidate_sides(largest)}}
    if config.preprocess.mode == "tile":
        table["rule"] = "tile mode: the configured tile side (tiles keep the native resolution)"
    return dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, size=chosen)), table
