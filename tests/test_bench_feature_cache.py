"""bench/feature_cache.py: cached backbone features give the very maps of an uncached run."""

from __future__ import annotations

import numpy as np

from bench.feature_cache import cached_backbones
from models.imageio import list_images
from models.preprocess import make_canvases


def test_cached_features_give_identical_maps_and_are_reused(detector, dataset, tmp_path):
    pics = [detector.read(p) for p in list_images(dataset / "test" / "good")[:3]]
    canvases = np.concatenate([make_canvases(p, detector.config.preprocess)[0] for p in pics])
    plain = detector.canvas_maps(canvases)
    with cached_backbones(tmp_path) as first:
        filled = detector.canvas_maps(canvases)
    with cached_backbones(tmp_path) as second:
        read = detector.canvas_maps(canvases[[2, 0]])  # another batch of the same canvases
    assert first == {"hits": 0, "misses": 3} and second == {"hits": 2, "misses": 0}
    np.testing.assert_array_equal(filled, plain)
    np.testing.assert_array_equal(read, plain[[2, 0]])
    assert detector.canvas_maps(canvases[:1]).shape == plain[:1].shape  # the patch is gone after the block
