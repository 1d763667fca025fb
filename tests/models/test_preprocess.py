import cv2
import numpy as np

from models.config import PreprocessConfig
from models.geometry import FeatureGrid
from models.preprocess import make_canvases, stitch, to_original, valid_cells


def test_letterbox_keeps_aspect_ratio_and_marks_padding():
    img = np.random.default_rng(0).random((500, 1250, 3), dtype=np.float32)
    canvases, layout = make_canvases(img, PreprocessConfig(mode="letterbox", size=256, margin=16))
    assert canvases.shape == (1, 256, 256, 3)
    assert layout.work_hw == (90, 224) and layout.offset == 16  # 500/1250 * 224, not squashed
    np.testing.assert_allclose(canvases[0, 16:106, 16:240], cv2.resize(img, (224, 90), interpolation=cv2.INTER_AREA))
    # cell centres 4, 12, 20, ...: rows 2..13 and cols 2..29 are real pixels
    cells = valid_cells(layout, FeatureGrid(256, 8))
    assert cells.shape == (1, 32, 32) and cells[0, 2:13, 2:30].all()
    assert not cells[0, :2].any() and not cells[0, 14:].any() and not cells[0, :, 30:].any()
    maps = np.zeros((1, 256, 256), np.float32)
    maps[0, 16:106, 16:240] = 1
    assert (stitch(maps, layout) == 1).all()


def test_tile_mode_covers_native_resolution_and_stitches_back():
    img = np.zeros((300, 700, 3), np.float32)
    cfg = PreprocessConfig(mode="tile", size=256, overlap=32)
    canvases, layout = make_canvases(img, cfg)
    assert layout.work_hw == (300, 700) and len(canvases) == 2 * 3
    covered = np.zeros((300, 700), bool)
    for y, x, h, w in layout.windows:
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    maps = np.ones((len(canvases), 256, 256), np.float32)
    assert np.allclose(stitch(maps, layout), 1.0)
    assert to_original(stitch(maps, layout), layout).shape == (300, 700)


def test_tiny_and_thin_images_are_handled():
    for shape in [(1, 1, 3), (1, 900, 3), (3, 2, 3)]:
        cfg = PreprocessConfig()
        canvases, layout = make_canvases(np.ones(shape, np.float32), cfg)
        assert canvases.shape == (1, cfg.size, cfg.size, 3) and min(layout.work_hw) >= 1
