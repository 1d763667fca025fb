"""Image geometry: how an image of any shape becomes fixed-size canvases and back.

Three modes (``PreprocessConfig.mode``), recorded in the artifact:

* ``letterbox`` (default): scale the long side to ``size - 2 * margin``, keep the aspect
  ratio, place it ``margin`` pixels from the top-left corner and fill the rest of the
  square canvas by reflection. The padding is never scored.
* ``resize``: squash to ``size x size`` (what most tools do; thin defects on long
  parts can vanish).
* ``tile``: scale by ``tile_scale`` (1.0 = native resolution) and cut overlapping
  ``size x size`` tiles; tile maps are averaged where they overlap.

The anomaly map lives on the *work image* (the image after scaling); ``Layout`` holds
where each canvas goes on it and how it maps back to the original pixels.

A decoder may hand over a ``Picture``: pixels already area-reduced to twice the work
image's size (``decode_hw``) and the original size, so that a 6000 x 6000 upload never
exists as a full-size float image.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import cv2
import numpy as np

from models.config import PreprocessConfig
from models.geometry import FeatureGrid


class Picture(NamedTuple):
    pixels: np.ndarray
    """(h, w, 3) RGB, uint8 or float32 in [0, 1], possibly reduced from the original."""
    original_hw: tuple[int, int]
    """Height and width of the image as stored (after EXIF orientation)."""


def as_picture(image: Picture | np.ndarray) -> Picture:
    """A picture, checked: (h, w, 3) uint8, or float with every value finite (a NaN or inf pixel
    would silently turn the score into NaN, and a NaN verdict into "good")."""
    pic = image if isinstance(image, Picture) else Picture(image, image.shape[:2])
    px = pic.pixels
    if px.ndim != 3 or px.shape[2] != 3 or px.shape[0] < 1 or px.shape[1] < 1:
        raise ValueError(f"an image must be (H, W, 3), got shape {px.shape}")
    if px.dtype != np.uint8:
        if px.dtype.kind != "f":
            raise ValueError(f"image pixels must be uint8 or float in [0, 1], got {px.dtype}")
        if not np.isfinite(px).all():
            raise ValueError("image holds non-finite pixel values (NaN or inf); refusing to score it")
    return pic


def work_hw(original_hw: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int]:
    """Height and width of the work image (the scaled image the map is defined on)."""
    h, w = original_hw
    if cfg.mode == "resize":
        return cfg.size, cfg.size
    scale = (cfg.size - 2 * cfg.margin) / max(h, w) if cfg.mode == "letterbox" else cfg.tile_scale
    return max(1, round(h * scale)), max(1, round(w * scale))


def decode_hw(original_hw: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int] | None:
    """Size a decoder may reduce an image to: each side at least four times the work image's is
    reduced to exactly twice it, the other side is kept (None = use the full image). Per side, so a
    40,000,000 x 1 strip is reduced along its length too.

    Box (area) filters are separable and compose: area-reducing to twice the work size and then
    area-halving equals area-reducing straight to the work size, up to the rounding of the 8-bit
    intermediate."""
    (h, w), (wh, ww) = original_hw, work_hw(original_hw, cfg)
    target = (2 * wh if h >= 4 * wh else h, 2 * ww if w >= 4 * ww else w)
    return target if target != (h, w) else None


class Layout(NamedTuple):
    original_hw: tuple[int, int]
    """Height and width of the decoded image."""
    work_hw: tuple[int, int]
    """Height and width of the scaled image the anomaly map is defined on."""
    windows: tuple[tuple[int, int, int, int], ...]
    """Per canvas: (y, x, h, w) of its valid part on the work image."""
    offset: int = 0
    """Where the valid part starts inside each canvas (pixels from the top and the left)."""


def area_reduce(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area (box) reduction to (h, w), in memory that does not grow with the source's size.

    cv2's INTER_AREA builds weight tables over the source when the ratio is not a whole number (458 MB
    for a 40,000,000 x 1 strip reduced to 768 px; none for 512 px, a whole ratio). An axis at least 64 x
    its target is therefore first box-reduced by a whole factor, which leaves at least 8 x, on cv2's
    table-free path (the last source pixels that do not fill a whole block are dropped: under one
    eighth of a target pixel), then area-reduced the rest of the way."""
    for axis, target in ((0, h), (1, w)):
        n = img.shape[axis]
        if n >= 64 * target:
            f = n // (8 * target)
            img = img[: n // f * f] if axis == 0 else img[:, : n // f * f]
            hw = (n // f, img.shape[1]) if axis == 0 else (img.shape[0], n // f)
            img = cv2.resize(img, hw[::-1], interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if (h, w) == img.shape[:2]:
        return img
    if h <= img.shape[0] and w <= img.shape[1]:
        return area_reduce(img, h, w)
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _pad_to(img: np.ndarray, h: int, w: int, offset: int = 0) -> np.ndarray:
    """Pad to (h, w) by reflection, `offset` pixels on top/left and the rest bottom/right
    (replication when the image is too thin to reflect)."""
    ph, pw = h - img.shape[0] - offset, w - img.shape[1] - offset
    if ph == 0 and pw == 0 and offset == 0:
        return img
    fits = max(ph, offset) < img.shape[0] and max(pw, offset) < img.shape[1]
    border = cv2.BORDER_REFLECT_101 if fits else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(img, offset, ph, offset, pw, border)


def _tile_starts(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def as_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float pixels -> float32 in [0, 1]."""
    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32, copy=False)


def plan_canvases(image: Picture | np.ndarray, cfg: PreprocessConfig) -> tuple[Layout, Iterator[np.ndarray]]:
    """A picture (or an (H, W, 3) float/uint8 image) -> its layout and its (size, size, 3) float canvases,
    made one at a time: a tiled 6000 x 6000 image never holds all its canvases at once."""
    pic = as_picture(image)
    h, w = pic.original_hw
    wh, ww = work_hw((h, w), cfg)
    s = cfg.size
    if cfg.mode == "resize":
        return Layout((h, w), (s, s), ((0, 0, s, s),)), iter([_resize(as_float(pic.pixels), s, s)])
    if cfg.mode == "letterbox":
        m = cfg.margin
        return Layout((h, w), (wh, ww), ((0, 0, wh, ww),), m), iter([_pad_to(_resize(as_float(pic.pixels), wh, ww),
                                                                              s, s, m)])
    work = _resize(pic.pixels, wh, ww)  # uint8 stays uint8: canvases are made float one by one
    windows = tuple((y, x, min(s, wh - y), min(s, ww - x)) for y in _tile_starts(wh, s, cfg.overlap)
                    for x in _tile_starts(ww, s, cfg.overlap))
    canvases = (_pad_to(as_float(work[y : y + th, x : x + tw]), s, s) for y, x, th, tw in windows)
    return Layout((h, w), (wh, ww), windows), canvases


def make_canvases(image: Picture | np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, Layout]:
    """A picture (or an (H, W, 3) float/uint8 image) -> (N, size, size, 3) float canvases and their layout."""
    layout, canvases = plan_canvases(image, cfg)
    return np.stack(list(canvases)), layout


class Stitcher:
    """Per-canvas maps (size, size) or (size, size, C), added in order as they are computed -> the
    (work_h, work_w[, C]) map; overlaps averaged."""

    def __init__(self, layout: Layout):
        self.layout, self._next = layout, 0
        self._total: np.ndarray | None = None
        self._count = None if len(layout.windows) == 1 else np.zeros(layout.work_hw, np.uint16)
        self._single: np.ndarray | None = None

    def add(self, canvas_map: np.ndarray) -> None:
        y, x, h, w = self.layout.windows[self._next]
        self._next += 1
        if self._count is None:
            o = self.layout.offset
            self._single = canvas_map[o : o + h, o : o + w]
            return
        if self._total is None:
            self._total = np.zeros(self.layout.work_hw + canvas_map.shape[2:], np.float32)
        self._total[y : y + h, x : x + w] += canvas_map[:h, :w]
        self._count[y : y + h, x : x + w] += 1

    def result(self) -> np.ndarray:
        assert self._next == len(self.layout.windows), "every canvas must be added before the map is read"
        if self._count is None:
            return self._single
        assert self._count.min() >= 1, "tiles cover the whole work image"
        count = self._count.reshape(self._count.shape + (1,) * (self._total.ndim - 2))
        np.divide(self._total, count, out=self._total)  # in place: no second work-size array
        return self._total


def stitch(canvas_maps: np.ndarray, layout: Layout) -> np.ndarray:
    """(N, size, size) per-canvas maps -> (work_h, work_w) map; overlaps are averaged."""
    s = Stitcher(layout)
    for m in canvas_maps:
        s.add(m)
    return s.result()


def to_original(work_map: np.ndarray, layout: Layout) -> np.ndarray:
    """Resize a work-image map to the original image's pixels."""
    h, w = layout.original_hw
    return cv2.resize(work_map, (w, h), interpolation=cv2.INTER_LINEAR)


def valid_cells(layout: Layout, grid: FeatureGrid) -> np.ndarray:
    """(N, cells, cells) bool: feature cells whose centre lies in real pixels."""
    c = grid.centres(layout.offset)  # cell centres relative to the valid part
    rows = [((c >= 0) & (c < h))[:, None] & ((c >= 0) & (c < w))[None, :] for _, _, h, w in layout.windows]
    return np.stack(rows)
