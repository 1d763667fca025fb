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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunk_bomb_png(megabytes: float = 30.0) -> bytes:
    """A valid small PNG carrying `megabytes` of empty ancillary chunks before its pixels: cheap to send,
    seconds of parsing (and memory) for a parser that walks and keeps every chunk."""
    good = part_png(5)
    head, rest = good[:33], good[33:]  # signature + IHDR, then IDAT... IEND
    empty = _png_chunk(b"tEXt", b"")
    return head + empty * int(megabytes * 2**20 / len(empty)) + rest


def comment_bomb_jpeg(megabytes: float = 30.0, segment: int = 65535) -> bytes:
    """A valid small JPEG carrying `megabytes` of comment (COM) segments of `segment` bytes (64 KiB: the
    most metadata per marker; 4: the most markers per byte) before its pixels."""
    good = encode(Image.fromarray(np.full((64, 64, 3), 128, np.uint8)), "JPEG")
    com = b"\xff\xfe" + segment.to_bytes(2, "big") + b"x" * (segment - 2)
    return good[:2] + com * int(megabytes * 2**20 / len(com)) + good[2:]


@functools.lru_cache(maxsize=4)
def strip_png(width: int, height: int) -> bytes:
    """A real gray PNG `width` x `height` (for example 40,000,000 x 1): kilobytes on the wire."""
    import struct
    import zlib

    row = b"\0" + bytes(range(256)) * (width // 256) + bytes(width % 256)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + \
        _png_chunk(b"IDAT", zlib.compress(row * height, 9)) + _png_chunk(b"IEND", b"")


@functools.lru_cache(maxsize=4)
def gray16_png(width: int = 6000, height: int = 6000) -> bytes:
    """A real 16-bit gray PNG (a bright square on a dark field): tens of kilobytes on the wire."""
    import struct
    import zlib

    dark = b"\0" + (4000).to_bytes(2, "big") * width
    part = b"\0" + (4000).to_bytes(2, "big") * (width // 4) + (40000).to_bytes(2, "big") * (width - width // 2) + \
        (4000).to_bytes(2, "big") * (width // 4)
    rows = [part if height // 4 <= y < 3 * height // 4 else dark for y in range(height)]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + \
        _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + _png_chunk(b"IEND", b"")


def float_tiff(bad: float | None = float("nan"), size: int = 64) -> bytes:
    """A 32-bit float gray TIFF with intensities in [0, 1]; `bad` (NaN, inf) in one pixel if given."""
    a = np.full((size, size), 0.5, np.float32)
    if bad is not None:
        a[size // 2, size // 2] = bad
    return encode(Image.fromarray(a, mode="F"), "TIFF")
