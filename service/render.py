"""Heat maps for responses: a colour overlay PNG or the raw float map, size-bounded."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from models.decision import normalized_map
from models.inspection import Inspection


def _bounded(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _map_at(r: Inspection, h: int, w: int) -> np.ndarray:
    """The work map resampled straight to the reply's size (never to the full original size)."""
    return cv2.resize(r.anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)


TRANSPARENT_BELOW = 0.35
"""Normalised map value (0.5 = the pixel threshold) under which the overlay is fully transparent: a good
part shows as itself, and the eye goes to what is near or above the threshold."""


def overlay_png(r: Inspection, pixel_threshold: float, max_side: int) -> tuple[bytes, int, int]:
    """RGBA overlay to lay over the image: JET colours (red = at or above twice the pixel threshold), fully
    transparent well below the pixel threshold, fading in up to it."""
    h, w = _bounded(*r.layout.original_hw, max_side)
    amap = _map_at(r, h, w)
    norm = normalized_map(amap, pixel_threshold)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.clip((norm - TRANSPARENT_BELOW) / (0.5 - TRANSPARENT_BELOW), 0, 1)
    out = np.dstack([colour, (alpha * 255).astype(np.uint8)])
    ok, png = cv2.imencode(".png", out)
    assert ok
    return png.tobytes(), w, h


def raw_map(r: Inspection, max_side: int) -> tuple[bytes, int, int]:
    h, w = _bounded(*r.layout.original_hw, max_side)
    amap = _map_at(r, h, w)
    return amap.astype("<f4").tobytes(), w, h


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
