"""A corpus of hostile and broken requests, generated here (no binaries committed).

Each case is sent to a running service; ``expected`` is the set of acceptable status
codes (200 = a legal image that must be scored). Used by tests/service/test_hostile.py
and bench/reliability.py.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.images import (
    chunk_bomb_png,
    comment_bomb_jpeg,
    encode,
    float_tiff,
    gray16_png,
    huge_png,
    part_png,
    png_bomb,
    strip_png,
)


@dataclass
class Case:
    name: str
    expected: set[int]
    method: str = "POST"
    path: str = "/v1/models/parts/inspect"
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "image/png"})
    files: Any = None
    data: Any = None
    raw: bytes | None = None
    """Sent byte by byte over a socket instead of through httpx (malformed or slow HTTP)."""
    stall_s: float = 0.0
    kind: str = ""
    """Which of CLASSES the case belongs to."""


def _rgb(h: int = 96, w: int = 160, seed: int = 0) -> np.ndarray:
    import cv2

    from models.synthetic import good_part

    return cv2.resize(good_part(np.random.default_rng(seed)), (w, h))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_corrupt_zlib() -> bytes:
    png = part_png(3)
    i = png.index(b"IDAT") + 4 + 40
    return png[:i] + bytes(b ^ 0x5A for b in png[i : i + 200]) + png[i + 200 :]


def _png_zero_width() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _jpeg_huge_dims() -> bytes:
    """A small JPEG whose SOF header is rewritten to claim 60000 x 60000 pixels."""
    jpg = bytearray(encode(Image.fromarray(_rgb()), "JPEG"))
    i = jpg.index(b"\xff\xc0")
    jpg[i + 5 : i + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(jpg)


def _gif_animated() -> bytes:
    frames = [Image.fromarray(_rgb(seed=s)).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _tiff_multipage() -> bytes:
    pages = [Image.fromarray(_rgb(seed=s)) for s in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def exif_rotated_png() -> tuple[bytes, bytes]:
    """(upright PNG, the same pixels stored rotated with EXIF orientation 6 = 'rotate 90 CW to show')."""
    upright = Image.fromarray(_rgb(120, 200, seed=4))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # viewer rotates it back by 90 degrees clockwise
    exif = stored.getexif()
    exif[0x0112] = 6
    return encode(upright, "PNG"), encode(stored, "PNG", exif=exif)


def _multipart_raw(body: bytes, boundary: str = "XyZ") -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={boundary}"}


CLASSES = {
    "bytes": "garbage, truncated and corrupt image data (415/422)",
    "content-type": "lying, missing or non-image content types (415)",
    "format": "formats outside the documented list: PPM, TGA, ICO, PCX, EPS, SGI (415)",
    "pixels": "decompression bombs and huge-pixel images (413 from the header, or decoded reduced)",
    "legal-odd": "legal but unusual images that must be scored (200)",
    "multipart": "malformed or surprising multipart bodies (400/415/422)",
    "batch": "batch misuse, and batches mixing good and bad files (per-image results)",
    "body": "oversized and slow bodies (413/408)",
    "routing": "unknown models, traversal, NUL and long names, wrong methods (404/405/422)",
    "admin": "admin routes without or with a wrong key (401)",
    "wrong-answer": "inputs and settings that would be answered wrongly if accepted: non-finite pixels, an alpha "
                    "the calibration cannot support (422)",
    "parse-cost": "files whose parsing costs more than their bytes: chunk and marker bombs (422), 1-3 px high "
                  "strips and 16-bit images (scored within the memory bound)",
    "protocol": "request smuggling (Content-Length with Transfer-Encoding: 400 + close), malformed request lines "
                "(JSON 400), HEAD on health routes (200)",
}
"""Every class of hostile or careless request the service is tried with; the corpus covers each."""


def _other_format(fmt: str) -> bytes:
    if fmt == "EPS":  # Pillow would hand this to Ghostscript
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30 20\nshowpage\n"
    return encode(Image.fromarray(_rgb()), fmt)


def build_corpus(max_body: int) -> list[Case]:
    rng = np.random.default_rng(0)
    good = part_png(11)
    rgb = _rgb()
    jpeg = encode(Image.fromarray(rgb), "JPEG")
    upright, rotated = exif_rotated_png()
    pal = Image.fromarray(rgb).convert("P")
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    ok = score = {200}
    bad_img = {415, 422}
    batch = "/v1/models/parts/inspect/batch"
    bomb_mb = min(30.0, 0.9 * max_body / 2**20)  # as large as the body limit lets through
    sections: dict[str, list[Case]] = {
        "bytes": [
            Case("empty body", {422}, content=b""),
            Case("random bytes 1 KB", {415}, content=rng.bytes(1024)),
            Case("random bytes 200 KB", {415}, content=rng.bytes(200_000)),
            Case("HTML sent as image/png", {415}, content=b"<!doctype html><html><body>hi</body></html>"),
            Case("JSON sent as image/png", {415}, content=b'{"image": "base64..."}'),
            Case("truncated PNG, 100 bytes", bad_img, content=good[:100]),
            Case("truncated PNG, half", bad_img, content=good[: len(good) // 2]),
            Case("truncated JPEG, half", bad_img, content=jpeg[: len(jpeg) // 2]),
            Case("JPEG header only", bad_img, content=jpeg[:24]),
            Case("PNG with corrupt zlib stream", bad_img, content=_png_corrupt_zlib()),
            Case("zero-width PNG", bad_img, content=_png_zero_width()),
        ],
        "content-type": [
            Case("HTML with text/html", {415}, content=b"<html></html>", headers={"content-type": "text/html"}),
            Case("JSON with application/json", {415}, content=b"{}", headers={"content-type": "application/json"}),
            Case("no content-type", {415}, content=good, headers={}),
            Case("PNG bytes as text/plain", {415}, content=good, headers={"content-type": "text/plain"}),
            Case("PNG bytes as octet-stream", ok, content=good, headers={"content-type": "application/octet-stream"}),
            Case("PNG bytes as image/jpeg (lying type)", ok, content=good, headers={"content-type": "image/jpeg"}),
        ],
        "format": [Case(f"{fmt} image", {415}, content=_other_format(fmt))
                   for fmt in ("PPM", "TGA", "ICO", "PCX", "EPS", "SGI")],
        "pixels": [
            Case("PNG bomb 100000x100000", {413}, content=png_bomb()),
            Case("PNG bomb 20000x20000", {413}, content=png_bomb(20_000, 20_000)),
            Case("JPEG claiming 60000x60000", {413}, content=_jpeg_huge_dims()),
            Case("6000x6000 PNG of 0.15 MB (decoded reduced)", score, content=huge_png(6000, 6000)),
            Case("batch of 4 huge-pixel PNGs", score, path=batch, headers={},
                 files=[("files", (f"h{i}.png", huge_png(6000, 6000), "image/png")) for i in range(4)]),
        ],
        "legal-odd": [
            Case("one-pixel PNG", score, content=encode(Image.fromarray(np.zeros((1, 1, 3), np.uint8)), "PNG")),
            Case("1x2000 line PNG", score, content=encode(Image.fromarray(np.zeros((1, 2000, 3), np.uint8)), "PNG")),
            Case("16-bit grayscale PNG", score,
                 content=encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG")),
            Case("32-bit integer TIFF", score,
                 content=encode(Image.fromarray(rgb[..., 0].astype(np.int32) * 100), "TIFF")),
            Case("float TIFF", score, content=encode(Image.fromarray(rgb[..., 0].astype(np.float32) / 255), "TIFF")),
            Case("palette PNG", score, content=encode(pal, "PNG")),
            Case("palette PNG with transparency", score, content=encode(pal_t, "PNG", transparency=0)),
            Case("RGBA PNG", score, content=encode(Image.fromarray(rgb).convert("RGBA"), "PNG")),
            Case("LA PNG", score, content=encode(Image.fromarray(rgb).convert("LA"), "PNG")),
            Case("CMYK JPEG", score, content=encode(Image.fromarray(rgb).convert("CMYK"), "JPEG")),
            Case("grayscale JPEG", score, content=encode(Image.fromarray(rgb[..., 0]), "JPEG")),
            Case("animated GIF", score, content=_gif_animated()),
            Case("multi-page TIFF", score, content=_tiff_multipage()),
            Case("BMP", score, content=encode(Image.fromarray(rgb), "BMP")),
            Case("WebP", score, content=encode(Image.fromarray(rgb), "WEBP")),
            Case("EXIF-rotated PNG", score, content=rotated),
        ],
        "multipart": [
            Case("multipart with no file", {422}, headers={}, files={"comment": (None, b"no file here")}),
            Case("form-urlencoded body", {415}, headers={}, data={"image": "not a file"}),
            Case("multipart with two files on single inspect", {400, 413, 422}, headers={},
                 files=[("a", ("a.png", good, "image/png")), ("b", ("b.png", good, "image/png"))]),
            Case("path-traversal file name", score, headers={},
                 files={"file": ("../../../etc/passwd", good, "image/png")}),
            Case("markup in the file name", score, headers={},
                 files={"file": ('<img src=x onerror="alert(1)">.png', good, "image/png")}),
            Case("multipart without boundary", {400, 422}, content=b"--x\r\n",
                 headers={"content-type": "multipart/form-data"}),
            Case("multipart with garbage body", {400, 422}, content=b"not multipart at all",
                 headers=_multipart_raw(b"")),
        ],
        "batch": [
            Case("batch with too many files", {400, 413, 422}, path=batch, headers={},
                 files=[("files", (f"{i}.png", b"x", "image/png")) for i in range(40)]),
            Case("batch as raw body", {415}, path=batch, content=good),
            Case("batch mixing good, garbage, PPM and a bomb (per-image results)", score, path=batch, headers={},
                 files=[("files", ("good.png", good, "image/png")), ("files", ("junk.png", b"junk", "image/png")),
                        ("files", ("x.ppm", _other_format("PPM"), "image/png")),
                        ("files", ("bomb.png", png_bomb(), "image/png"))]),
        ],
        "body": [
            Case("oversized body (Content-Length)", {413}, content=b"\0" * (max_body + 1)),
            Case("oversized chunked body", {413}, content=None, raw=(
                b"POST /v1/models/parts/inspect HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + (b"100000\r\n" + b"\0" * 0x100000 + b"\r\n") *
                (max_body // 0x100000 + 2) + b"0\r\n\r\n")),
            Case("slow body (slowloris)", {408}, raw=(
                b"POST /v1/models/parts/inspect HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                b"content-length: 100000\r\n\r\n" + good[:1000]), stall_s=6.0),
            Case("20 KB request head in one piece (bounded; h11 refuses heads still incomplete at 16 KiB)",
                 {200, 400, 431}, raw=(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-junk: " + b"a" * 20_000 + b"\r\n\r\n")),
        ],
        "routing": [
            Case("invalid heatmap option", {422}, path="/v1/models/parts/inspect?heatmap=svg", content=good),
            Case("GET on inspect", {405}, method="GET", content=None),
            Case("unknown model", {404}, path="/v1/models/nope/inspect", content=good),
            Case("model name ../parts (encoded)", {404}, path="/v1/models/..%2Fparts/inspect", content=good),
            Case("model name with NUL", {404}, path="/v1/models/parts%00/inspect", content=good),
            Case("model name 300 chars", {404}, path="/v1/models/" + "a" * 300 + "/inspect", content=good),
            Case("model card of ../../etc", {404}, method="GET", path="/v1/models/..%2F..%2Fetc", content=None),
        ],
        "wrong-answer": [
            Case("float TIFF with one NaN pixel", {422}, content=float_tiff(float("nan")),
                 headers={"content-type": "image/tiff"}),
            Case("float TIFF with one +inf pixel", {422}, content=float_tiff(float("inf")),
                 headers={"content-type": "image/tiff"}),
            Case("float TIFF with one -inf pixel", {422}, content=float_tiff(float("-inf")),
                 headers={"content-type": "image/tiff"}),
            Case("?alpha=0.0001, below 1/(n+1)", {422}, path="/v1/models/parts/inspect?alpha=0.0001", content=good),
            Case("?alpha=1e-300 on batch", {422}, path=batch + "?alpha=1e-300", headers={},
                 files=[("files", ("good.png", good, "image/png"))]),
            Case("?alpha=nan", {422}, path="/v1/models/parts/inspect?alpha=nan", content=good),
        ],
        "parse-cost": [
            Case(f"PNG with {bomb_mb:.0f} MB of empty ancillary chunks", {422}, content=chunk_bomb_png(bomb_mb)),
            Case(f"JPEG with {bomb_mb:.0f} MB of 4-byte comment markers", {422},
                 content=comment_bomb_jpeg(bomb_mb, segment=4), headers={"content-type": "image/jpeg"}),
            Case("JPEG with 30 MB of 64 KiB comment markers", {413, 422}, content=comment_bomb_jpeg(30)),
            Case("40000000 x 1 PNG", score, content=strip_png(40_000_000, 1)),
            Case("13000000 x 3 PNG", score, content=strip_png(13_000_000, 3)),
            Case("6000 x 6000 16-bit gray PNG", score, content=gray16_png(6000, 6000)),
        ],
        "protocol": [
            Case("Content-Length with Transfer-Encoding (smuggling)", {400}, raw=(
                b"POST /v1/models/parts/inspect HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                b"content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")),
            Case("garbage request line", {400}, raw=b"NOT HTTP AT ALL\r\n\r\n"),
            Case("HEAD /healthz", ok, method="HEAD", path="/healthz", content=None, headers={}),
            Case("HEAD /readyz", ok, method="HEAD", path="/readyz", content=None, headers={}),
        ],
        "admin": [
            Case("admin reload, malformed JSON, no key", {401}, path="/v1/models/reload", content=b"{bad json",
                 headers={"content-type": "application/json"}),
            Case("admin reload, malformed JSON, wrong key", {401}, path="/v1/models/parts/reload", content=b"{bad",
                 headers={"content-type": "application/json", "authorization": "Bearer nope"}),
            Case("admin reload of ../parts", {401, 404}, path="/v1/models/..%2Fparts/reload", content=b""),
        ],
    }
    return [dataclasses.replace(c, kind=kind) for kind, cases in sections.items() for c in cases]


def send(base_url: str, case: Case, timeout: float = 60.0) -> tuple[int, str, dict]:
    """-> (status, body text, headers); status 0 if the server closed without a response."""
    if case.raw is not None:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            try:
                s.sendall(case.raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer 413 and close before the whole body is sent
            if case.stall_s:
                time.sleep(case.stall_s)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
                    if b"\r\n\r\n" in data and len(data) > 200:
                        break
            except (ConnectionResetError, TimeoutError):
                pass
        if not data.startswith(b"HTTP/1.1 "):
            return 0, data.decode(errors="replace"), {}
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace"), {}
    with httpx.Client(base_url=base_url, timeout=timeout) as c:
        r = c.request(case.method, case.path, content=case.content, headers=case.headers, files=case.files,
                      data=case.data)
        return r.status_code, r.text, dict(r.headers)
