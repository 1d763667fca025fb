"""Decoding image files and bytes into float RGB arrays, with limits checked first.

One decoder for training, the CLI and the service: PNG, JPEG, BMP, TIFF, GIF, WebP;
grayscale, RGB, RGBA, palette, CMYK, 16-bit and float; EXIF orientation applied
(a rotated camera JPEG is scored upright); multi-frame files use their first frame.
The pixel count is checked from the header before any pixel is decoded, so a
decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not a usable image. ``kind`` says why, for HTTP status mapping."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind  # 'invalid' | 'unsupported' | 'too_large'


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "image") -> np.ndarray:
    """Bytes of an image file -> (H, W, 3) float32 RGB in [0, 1]."""
    if not data:
        raise ImageDecodeError(f"{source}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(f"{source}: {e}", "too_large") from e
        except Exception as e:  # noqa: BLE001 - PIL raises many types for garbage
            raise ImageDecodeError(f"{source}: not a recognised image format", "unsupported") from e
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"{source}: image has zero size ({width}x{height})")
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"{source}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
                "too_large",
            )
        try:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb_float(img)
        except ImageDecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated / corrupt streams
            raise ImageDecodeError(f"{source}: corrupt or truncated image data ({type(e).__name__})") from e


def _to_rgb_float(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / peak, 0.0, 1.0)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageDecodeError(f"unexpected pixel layout {a.shape}", "unsupported")
    return a


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read file ({e.strerror})") from e
    return decode_image(data, max_pixels, source=str(path))


def list_images(folder: str | Path) -> list[Path]:
    """Image files under a folder, recursively, sorted for reproducible splits."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
