"""bench/feature_cache.py: cached backbone features give the maps of an uncached run (to float32 rounding:
a stacked copy of the features can take another kernel than the backbone's own output layout)."""

from __future__ import annotations

import numpy as np

from bench.feature_cache import cached_backbones
from models.backbone import Backbone
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
    # the map values here are O(1): an absolute 1e-5 is float32 rounding
    np.testing.assert_allclose(filled, plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read, plain[[2, 0]], rtol=1e-5, atol=1e-5)
    assert Backbone.forward.__module__ == "models.backbone"  # the product's own forward is back after the block


def test_the_offline_runtime_is_cached_apart_from_pytorch(detector, dataset, tmp_path):
    pics = [detector.read(p) for p in list_images(dataset / "test" / "good")[:2]]
    canvases = np.concatenate([make_canvases(p, detector.config.preprocess)[0] for p in pics])
    fast = detector.offline()
    plain = fast.canvas_maps(canvases)
    with cached_backbones(tmp_path) as eager:
        detector.canvas_maps(canvases)
    with cached_backbones(tmp_path) as first:
        filled = fast.canvas_maps(canvases)
    with cached_backbones(tmp_path) as second:
        read = fast.canvas_maps(canvases)
    assert eager["misses"] == 2 and first == {"hits": 0, "misses": 2} and second == {"hits": 2, "misses": 0}
    np.testing.assert_allclose(filled, plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read, plain, rtol=1e-5, atol=1e-5)
