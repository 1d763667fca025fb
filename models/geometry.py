"""The feature grid: where each backbone feature cell sits on a canvas.

One definition of the grid (stride, cells per side, cell centres) used by fitting,
the atlas, scoring and explanations, so they can never disagree about which pixels
a patch feature describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.config import ModelConfig


@dataclass(frozen=True)
class FeatureGrid:
    size: int
    """Canvas side in pixels."""
    stride: int
    """Canvas pixels per feature cell: 2 ** (finest stage + 1)."""

    def __post_init__(self) -> None:
        if self.stride < 1 or self.size % self.stride:
            raise ValueError(f"canvas size {self.size} is not a multiple of the stride {self.stride}")

    @classmethod
    def of(cls, config: ModelConfig) -> FeatureGrid:
        return cls(config.preprocess.size, 2 ** (min(config.backbone.stages) + 1))

    @property
    def cells(self) -> int:
        """Cells per side of the (square) grid."""
        return self.size // self.stride

    def centres(self, offset: int = 0) -> np.ndarray:
        """(cells,) centre of each cell in canvas pixels, minus `offset` (where real pixels start)."""
        return np.arange(self.cells) * self.stride + self.stride / 2 - offset

    def cell_of(self, pixel: float, offset: int = 0) -> int:
        """Index of the cell containing canvas pixel `pixel + offset`, clipped to the grid."""
        return int(np.clip((pixel + offset) // self.stride, 0, self.cells - 1))

    def centre_pixel(self, cell: int) -> int:
        """Integer canvas pixel at the centre of `cell`."""
        return cell * self.stride + self.stride // 2

    @property
    def min_region_area(self) -> int:
        """Regions smaller than a quarter of a cell are smoothing noise, not defects."""
        return self.stride * self.stride // 4
