"""Tile-mode inference holds a bounded number of canvases, however large the image."""

import dataclasses
import tracemalloc

import numpy as np

from models.config import ModelConfig, PreprocessConfig
from models.geometry import FeatureGrid
from models.inspection import MAX_CANVASES, Scorer


class CountingScorer(Scorer):
    """A Scorer whose model returns flat maps and records how many canvases each call held."""

    def __init__(self, preprocess: PreprocessConfig):
        self.config = dataclasses.replace(ModelConfig(), preprocess=preprocess)
        self.grid = FeatureGrid.of(self.config)
        self.calibration, self._cal_scores, self.calls = None, None, []

    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        self.calls.append(len(canvases))
        return np.ones(canvases.shape[:3], np.float32)


def test_a_tiled_6000px_image_is_scored_in_bounded_chunks():
    # 256 px tiles (overlap 32): hundreds of windows, so holding them all at once is far above the chunked bound
    cfg = PreprocessConfig(mode="tile", tile_scale=1.0, size=256)
    scorer = CountingScorer(cfg)
    image = np.zeros((6000, 6000, 3), np.uint8)
    tracemalloc.start()
    (work_map, layout), = scorer.maps([image])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(layout.windows) > 300 and sum(scorer.calls) == len(layout.windows)
    assert max(scorer.calls) <= MAX_CANVASES
    assert work_map.shape == (6000, 6000) and np.allclose(work_map, 1.0)
    canvas = cfg.size * cfg.size * 3 * 4
    # the map (4 B/px) + its overlap count (2 B/px) + a few chunks of canvases; all canvases at once were
    # len(windows) x canvas (about 0.6 GB here)
    bound = 6000 * 6000 * 6 + 3 * MAX_CANVASES * canvas
    assert peak < bound, f"peak {peak / 2**20:.0f} MiB over bound {bound / 2**20:.0f} MiB"
    assert peak < len(layout.windows) * canvas / 2


def test_chunks_span_images_and_keep_their_order():
    cfg = PreprocessConfig(mode="tile", tile_scale=1.0)
    scorer = CountingScorer(cfg)
    images = [np.full((700, 900, 3), v, np.uint8) for v in (10, 200)]
    out = scorer.maps(images)
    assert [m.shape for m, _ in out] == [(700, 900), (700, 900)]
    assert sum(scorer.calls) == sum(len(lay.windows) for _, lay in out)
