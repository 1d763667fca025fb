"""The fit's canvas choice: the largest of 256 / 384 / 512 / 640 not above the good images' median long side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.config import ModelConfig, PreprocessConfig
from training.canvas import choose_canvas, choose_side, long_sides
from training.fit import FitConfig


@pytest.mark.parametrize(("sides", "largest", "chosen"), [
    ([266, 358, 600], 640, 256),  # magnetic_tile-like: median 358 -> 256, never upsampled to 384 or more
    ([400, 384, 390], 640, 384),
    ([600, 520, 700], 640, 512),
    ([640, 800, 1130], 640, 640),  # larger than every candidate: the config's side
    ([640, 800, 1130], 512, 512),  # a smaller config side caps the choice
    ([100, 120], 640, 256),  # smaller than every candidate: the smallest
    ([1000], 384, 384),  # never above the config's side
    ([400], 448, 384),  # a side that is not a candidate caps the list and is one itself
    ([900], 448, 448),
    ([50], 128, 128),  # a config below every candidate keeps its side
    ([], 640, 640),
])
def test_choose_side(sides, largest, chosen):
    assert choose_side(sides, largest) == chosen


def _png(path: Path, h: int, w: int) -> Path:
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))
    return path


def test_choose_canvas_reads_headers_skips_unreadable_files_and_keeps_tile_mode(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", h, w) for i, (h, w) in enumerate([(300, 200), (150, 350), (700, 90)])]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths.append(tmp_path / "bad.png")
    assert long_sides(paths) == [300, 350, 700]
    config, table = choose_canvas(paths, ModelConfig())
    assert config.preprocess.size == table["chosen"] == 256 and table["median_long_side"] == 350
    assert table["n_images"] == 3
    assert table["upsampled_share"] == pytest.approx({"256": 0.0, "384": 2 / 3, "512": 2 / 3, "640": 2 / 3})
    assert config.backbone == ModelConfig().backbone and config.scoring == ModelConfig().scoring
    tiled = ModelConfig(preprocess=PreprocessConfig(mode="tile"))
    assert choose_canvas(paths, tiled)[0] == tiled  # tiles keep the native resolution already


def test_fit_chooses_the_canvas_records_it_and_a_fixed_canvas_is_kept(detector, dataset):
    # the session's model: generated 320 x 192 parts, default config (640 px at most) -> 256 px, on its card
    table = detector.meta["canvas_choice"]
    assert detector.config.preprocess.size == table["chosen"] == 256 and table["median_long_side"] == 320
    assert table["upsampled_share"]["384"] == 1.0
    with pytest.raises(ValueError, match="canvas must be native or fixed"):
        FitConfig(canvas="auto")
