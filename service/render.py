"""Heat maps for responses: a colour overlay PNG or the raw float map, size-bounded."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from models.decision import normalized_map
from models.inspection import Inspection
from models.preprocess import Picture


def _bounded(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _map_at(r: Inspection, h: int, w: int) -> np.ndarray:
    """The work map resampled straight to the reply's size (never to the full original size)."""
    return cv2.resize(r.anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)


def overlay_png(image: Picture, r: Inspection, pixel_threshold: float, max_side: int) -> tuple[bytes, int, int]:
    """JET colour map over the image; red = at or above twice the pixel threshold."""
    h, w = _bounded(*r.layout.original_hw, max_side)
    amap = _map_at(r, h, w)
    norm = normalized_map(amap, pixel_threshold)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    px = image.pixels if image.pixels.dtype == np.uint8 else (np.clip(image.pixels, 0, 1) * 255).astype(np.uint8)
    base = cv2.resize(px, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]
    out = cv2.addWeighted(base, 0.55, colour, 0.45, 0)
    ok, png = cv2.imencode(".png", out)
    assert ok
    return png.tobytes(), w, h


def raw_map(r: Inspection, max_side: int) -> tuple[bytes, int, int]:
    h, w = _bounded(*r.layout.original_hw, max_side)
    amap = _map_at(r, h, w)
    return amap.astype("<f4").tobytes(), w, h


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
