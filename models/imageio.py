"""Decoding image files and bytes into RGB pictures, with limits checked first.

One decoder for training, the CLI and the service. Accepted formats, and nothing else:
PNG, JPEG (and camera MPO JPEGs), BMP, TIFF, WebP, GIF; grayscale, RGB, RGBA, palette,
CMYK, 16-bit, 32-bit integer and float; EXIF orientation applied (a rotated camera JPEG
is scored upright); multi-frame files use their first frame. Plain 8-bit gray and RGB PNGs are decoded by OpenCV
(the same pixels, faster: ``_opencv_png``), every other file by Pillow.

The format and pixel count are checked from the header before any pixel is decoded, so a
decompression bomb costs nothing. Given the model's geometry, an image at least four times
the model's work image is area-reduced right after decoding to exactly twice the work size
(``models.preprocess.decode_hw``), still uint8, and JPEGs whose sides divide by 8 are decoded at
1/8 scale by libjpeg (draft mode: block means) first where that keeps twice the work size: a
6000 x 6000 upload is never held as a full-size float image.

Intensities: 8-bit images are used as stored. 16-bit images are scaled by 65535. Float
images hold intensities in [0, 1] (values outside are clipped); 32-bit integer images
(and float images whose values exceed 1) are scaled by the smallest of 255, 65535 and
2^32 - 1 that holds their maximum.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from models.config import PreprocessConfig
from models.preprocess import Picture, area_reduce, decode_hw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
"""Pillow plugins the decoder may use (JPEG also opens camera MPO files); any other format (PPM, TGA,
ICO, PCX, EPS, ...) is refused before Pillow looks at it."""
DEFAULT_MAX_PIXELS = 40_000_000
_FULL_SCALES = (255.0, 65535.0, 4294967295.0)
Image.init()  # register every plugin once, so that `formats=` can name WEBP and TIFF
_TRANSPOSING = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class ImageDecodeError(ValueError):
    """The bytes are not a usable image. ``kind`` says why, for HTTP status mapping."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind  # 'invalid' | 'unsupported' | 'too_large'


class Header(NamedTuple):
    format: str
    width: int
    height: int
    """As stored (before EXIF orientation, which PNG may only reveal after the pixel data)."""

    @property
    def pixels(self) -> int:
        return self.width * self.height


MAX_SMALL_CHUNKS = 512
"""Most PNG chunks (or JPEG segments before the image data) shorter than ``SMALL_CHUNK`` bytes a file
may hold. Pillow parses each chunk in Python and keeps ancillary ones: without a cap a 30 MB file of
empty chunks costs seconds of parsing and memory far beyond its pixels. Larger chunks cost at least
``SMALL_CHUNK`` bytes of upload each, so the work of the scan below is bounded by bytes."""
SMALL_CHUNK = 1024
MAX_METADATA_BYTES = 8 * 1024 * 1024
"""Most bytes of JPEG segments before the image data (EXIF, ICC, comments, ...) an upload may carry."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_structure(data: bytes, source: str) -> bool:
    """Refuse PNG and JPEG files whose chunk or marker structure would make parsing cost more than
    their bytes warrant (see ``MAX_SMALL_CHUNKS``); other formats pass unchanged. -> whether the file is
    a PNG whose chunks leave OpenCV's decode equal to Pillow's (``_opencv_png``)."""
    if data.startswith(_PNG_SIGNATURE):
        return _check_png(data, source)
    if data.startswith(b"\xff\xd8"):
        _check_jpeg(data, source)
    return False


def _too_many(source: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(f"{source}: {what}: refused before parsing (a camera image carries a handful)")


_PLAIN_PNG_LATE = {b"IDAT", b"IEND"}
"""The only chunks a PNG for ``_opencv_png`` may carry after its first IDAT: Pillow reads later ones (text,
EXIF) only while decoding, where the check before it cannot see them."""


def _check_png(data: bytes, source: str) -> bool:
    """-> no tRNS or eXIf chunk anywhere and nothing but image data after the first IDAT."""
    pos, small, plain, seen_idat = 8, 0, True, False
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            return plain
        plain = plain and kind not in (b"tRNS", b"eXIf") and (not seen_idat or kind in _PLAIN_PNG_LATE)
        seen_idat = seen_idat or kind == b"IDAT"
        small += length < SMALL_CHUNK
        if small > MAX_SMALL_CHUNKS:
            raise _too_many(source, f"PNG with more than {MAX_SMALL_CHUNKS} chunks under {SMALL_CHUNK} bytes")
        pos += 12 + length
    return False  # no IEND: truncated, let the decoder report it


def _check_jpeg(data: bytes, source: str) -> None:
    pos, small, meta = 2, 0, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return  # not a marker: let the decoder report the corruption
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the entropy-coded data is libjpeg's
            return
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        small += length < SMALL_CHUNK
        meta += length
        if small > MAX_SMALL_CHUNKS:
            raise _too_many(source, f"JPEG with more than {MAX_SMALL_CHUNKS} segments under {SMALL_CHUNK} bytes")
        if meta > MAX_METADATA_BYTES:
            raise _too_many(source, f"JPEG with more than {MAX_METADATA_BYTES // 2**20} MiB of metadata segments")
        pos += 2 + length


def _open(data: bytes, max_pixels: int, source: str) -> tuple[Image.Image, Header, bool]:
    """-> the opened image (no pixel decoded), its header, and whether OpenCV may decode it (``_opencv_png``)."""
    if not data:
        raise ImageDecodeError(f"{source}: empty file")
    plain_png = check_structure(data, source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(f"{source}: {e}", "too_large") from e
        except Exception as e:  # noqa: BLE001 - PIL raises many types for garbage
            raise ImageDecodeError(f"{source}: not an accepted image format (send {', '.join(FORMATS[:-1])} or "
                                   f"GIF)", "unsupported") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{source}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(f"{source}: {width}x{height} = {width * height} pixels exceeds the limit of "
                               f"{max_pixels}", "too_large")
    return img, Header(img.format or "?", width, height), plain_png


_OPENCV_MAX_SIDE = 1 << 20
"""OpenCV refuses longer sides (CV_IO_MAX_IMAGE_WIDTH, _HEIGHT); Pillow decodes them (a 40,000,000 x 1 strip)."""


def _opencv_png(img: Image.Image, data: bytes, plain_png: bool) -> bool:
    """An 8-bit gray or RGB PNG without transparency, EXIF (chunk or ImageMagick's text profile) or chunks
    after its image data: OpenCV's libpng decode gives Pillow's pixels exactly (a PNG is lossless; neither
    applies gamma or ICC profiles) in 0.67-0.73 x its time on 0.8-1 megapixel parts (bench/results/decode.md), the
    largest share of a request's CPU after the model."""
    return (plain_png and img.format == "PNG" and img.mode in ("L", "RGB") and data[24] == 8
            and max(img.size) <= _OPENCV_MAX_SIDE and "transparency" not in img.info
            and "Raw profile type exif" not in img.info)


def _decode_png_opencv(data: bytes, gray: bool, source: str) -> np.ndarray:
    """A PNG that passed ``_opencv_png`` -> (H, W) gray or (H, W, 3) RGB uint8."""
    flags = (cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    a = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if a is None:
        raise ImageDecodeError(f"{source}: corrupt or truncated image data (PNG)")
    return a if gray else cv2.cvtColor(a, cv2.COLOR_BGR2RGB, dst=a)  # in place: one full-size array at a time


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "image") -> Header:
    """Format and size from the header alone (no pixel decoded); the same checks as decoding."""
    return _open(data, max_pixels, source)[1]


def decode_image(data: bytes, preprocess: PreprocessConfig | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 source: str = "image") -> Picture:
    """Bytes of an image file -> a Picture: RGB pixels (uint8, or float32 in [0, 1] for images deeper
    than 8 bits) and the original size. With a model's `preprocess` config the pixels are reduced
    while decoding where the image is much larger than the model's work image; with None they are
    the full image (for display)."""
    img, header, plain_png = _open(data, max_pixels, source)
    stored_hw = (header.height, header.width)
    # decode_hw is symmetric in height and width, so it can be taken on the stored image
    target = decode_hw(stored_hw, preprocess) if preprocess is not None else None
    try:
        if _opencv_png(img, data, plain_png):
            pixels, full, orientation = _decode_png_opencv(data, img.mode == "L", source), None, 1
        else:
            img.seek(0)
            if target is not None and img.format in ("JPEG", "MPO"):
                _draft(img, target)
            img.load()
            orientation = _orientation(img)
            pixels, full = _to_array(img, source)
        del img
        if target is not None:  # exact area average, as make_canvases does next: the two compose
            pixels = area_reduce(pixels, *target)
        if full is not None:  # deep images are scaled to [0, 1] after the reduction, never at full size
            pixels = np.clip(pixels.astype(np.float32) / np.float32(full), 0.0, 1.0)
        shown_hw = stored_hw[::-1] if orientation in _TRANSPOSING else stored_hw
        return Picture(np.ascontiguousarray(_ORIENT[orientation](_rgb(pixels))), shown_hw)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / corrupt streams
        raise ImageDecodeError(f"{source}: corrupt or truncated image data ({type(e).__name__})") from e


def _orientation(img: Image.Image) -> int:
    """EXIF orientation, read after the pixels (PNG may store it after them); broken EXIF counts as upright."""
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as viewers do
        return 1
    return orientation if orientation in _ORIENT else 1


def _draft(img: Image.Image, stored_hw: tuple[int, int]) -> None:
    """JPEG DCT scaling by 1/8 (each 8 x 8 block decoded to its DC coefficient: the block's mean, an exact
    box filter that composes with the area reduction), only where the result keeps at least the target
    size and the image divides evenly (geometry unchanged). libjpeg's 1/4 and 1/2 scalings are not box
    filters (a 6000 x 4500 JPEG at the 384 px canvas: up to 2.5/255 per canvas pixel against a full
    decode, tests/models/test_imageio.py), so they are not used."""
    h, w, s = img.height, img.width, 8
    if h % s == 0 and w % s == 0 and h // s >= stored_hw[0] and w // s >= stored_hw[1]:
        img.draft("L" if img.mode == "L" else "RGB", (w // s, h // s))


_ORIENT = {  # EXIF orientation -> the array operation that shows the image upright (as Pillow's exif_transpose)
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _to_array(img: Image.Image, source: str) -> tuple[np.ndarray, float | None]:
    """Decoded image -> ((H, W) gray or (H, W, 3) RGB array, full scale). uint8 images come with
    None; deeper images stay in a compact type (uint16, or float32 for 32-bit) with the full scale
    that maps them to [0, 1], applied after the reduction: never a full-size float64 copy. Gray stays
    one channel until the image is reduced (a third of the memory). Non-finite values are refused."""
    if img.mode.startswith("I;16"):
        a = np.asarray(img)
        return (a if a.dtype == np.uint16 else a.astype(np.uint16)), 65535.0
    if img.mode in ("I", "F"):
        a = np.asarray(img)
        if img.mode == "F" and not np.isfinite(a).all():
            raise ImageDecodeError(f"{source}: image holds non-finite pixel values (NaN or inf); "
                                   "send finite intensities")
        top = float(a.max(initial=0))
        full = 1.0 if img.mode == "F" and top <= 1.0 else next((s for s in _FULL_SCALES if top <= s), top)
        return a.astype(np.float32, copy=False), full
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return _uint8(img if img.mode in ("L", "RGB") else img.convert("RGB")), None


def _uint8(img: Image.Image, rows: int = 256) -> np.ndarray:
    """An L or RGB image as a uint8 array, copied in strips: ``np.asarray`` alone would hold the whole
    image twice more as bytes while converting."""
    shape = (img.height, img.width) if img.mode == "L" else (img.height, img.width, 3)
    out = np.empty(shape, np.uint8)
    for y in range(0, img.height, rows):
        out[y : y + rows] = np.asarray(img.crop((0, y, img.width, min(img.height, y + rows))))
    return out


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def read_image(path: str | Path, preprocess: PreprocessConfig | None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file (see ``decode_image``); errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read file ({e.strerror})") from e
    return decode_image(data, preprocess, max_pixels, source=str(path))


def list_images(folder: str | Path) -> list[Path]:
    """Image files under a folder, recursively, sorted for reproducible splits."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
