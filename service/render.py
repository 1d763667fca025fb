"""Heat maps for responses: a colour overlay PNG or the raw float map, size-bounded."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from models.detector import Inspection
from models.preprocess import to_original


def _bounded(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def overlay_png(image: np.ndarray, r: Inspection, pixel_threshold: float, max_side: int) -> tuple[bytes, int, int]:
    """JET colour map over the image; red = at or above twice the pixel threshold."""
    h, w = _bounded(*r.layout.original_hw, max_side)
    amap = cv2.resize(to_original(r.anomaly_map, r.layout), (w, h), interpolation=cv2.INTER_LINEAR)
    norm = np.clip(amap / (2 * pixel_threshold), 0, 1)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.resize((image * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]
    out = cv2.addWeighted(base, 0.55, colour, 0.45, 0)
    ok, png = cv2.imencode(".png", out)
    assert ok
    return png.tobytes(), w, h


def raw_map(r: Inspection, max_side: int) -> tuple[bytes, int, int]:
    h, w = _bounded(*r.layout.original_hw, max_side)
    amap = cv2.resize(to_original(r.anomaly_map, r.layout), (w, h), interpolation=cv2.INTER_LINEAR)
    return amap.astype("<f4").tobytes(), w, h


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
