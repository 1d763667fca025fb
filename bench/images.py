"""Encoded test images of every kind a camera or a person may send."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def part_png(rng_seed: int = 0, defect: str | None = None) -> bytes:
    from models.synthetic import add_defect, good_part

    rng = np.random.default_rng(rng_seed)
    img = good_part(rng)
    if defect:
        img, _ = add_defect(rng, img, defect)
    return encode(Image.fromarray(img), "PNG")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a huge image, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


@functools.lru_cache(maxsize=4)
def huge_png(width: int = 6000, height: int = 6000) -> bytes:
    """A real, fully decodable RGB PNG of width x height pixels that is small on the wire
    (a gray part on a dark background, stripes every 500 rows): memory follows pixels, not bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    dark = b"\0" + bytes([20, 20, 20]) * width
    part = b"\0" + bytes([20, 20, 20]) * (width // 4) + bytes([150, 140, 130]) * (width - width // 2) + \
        bytes([20, 20, 20]) * (width // 4)
    stripe = b"\0" + bytes([200, 60, 60]) * width
    rows = [stripe if y % 500 == 0 else part if height // 4 <= y < 3 * height // 4 else dark for y in range(height)]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + \
        chunk(b"IEND", b"")
