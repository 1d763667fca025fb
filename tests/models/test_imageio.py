import io

import cv2
import numpy as np
import pytest
from PIL import Image

from bench.images import encode, part_png, png_bomb
from models.config import PreprocessConfig
from models.imageio import ImageDecodeError, decode_image, probe_image
from models.preprocess import decode_hw, make_canvases
from models.synthetic import good_part

CFG = PreprocessConfig(size=384)  # a canvas whose 16 x side (8192 x 6144 px at 512) stays under the decoder's
# 40 M pixel limit, for the reduction tests below
RGB = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)


def test_modes_all_decode_to_rgb_pictures():
    cases = {
        "rgb png": encode(Image.fromarray(RGB), "PNG"),
        "gray jpeg": encode(Image.fromarray(RGB[..., 0]), "JPEG"),
        "rgba png": encode(Image.fromarray(RGB).convert("RGBA"), "PNG"),
        "palette png": encode(Image.fromarray(RGB).convert("P"), "PNG"),
        "16-bit png": encode(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "PNG"),
        "cmyk jpeg": encode(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
        "bmp": encode(Image.fromarray(RGB), "BMP"),
        "tiff": encode(Image.fromarray(RGB), "TIFF"),
        "webp": encode(Image.fromarray(RGB), "WEBP"),
        "gif": encode(Image.fromarray(RGB).convert("P"), "GIF"),
    }
    for name, data in cases.items():
        pic = decode_image(data, CFG, source=name)
        a = pic.pixels
        assert a.shape == (20, 30, 3) and pic.original_hw == (20, 30), name
        assert a.dtype == (np.float32 if name == "16-bit png" else np.uint8), name
        if a.dtype == np.float32:
            assert 0.0 <= a.min() and a.max() <= 1.0, name
    np.testing.assert_array_equal(decode_image(cases["rgb png"], CFG).pixels, RGB)  # 8-bit pixels as stored


def test_16_bit_keeps_full_range():
    a = np.array([[0, 65535]], np.uint16)
    out = decode_image(encode(Image.fromarray(a), "PNG"), CFG).pixels
    assert out[0, 0, 0] == 0.0 and out[0, 1, 0] == pytest.approx(1.0)


def test_float_and_32_bit_tiffs_decode_to_their_intensities():
    gray = RGB[..., 0]
    expected = gray.astype(np.float32) / 255
    as_float01 = decode_image(encode(Image.fromarray(expected), "TIFF"), CFG).pixels[..., 0]
    np.testing.assert_allclose(as_float01, expected, atol=1e-6)  # float TIFF: values are intensities
    int8range = decode_image(encode(Image.fromarray(gray.astype(np.int32)), "TIFF"), CFG).pixels[..., 0]
    np.testing.assert_allclose(int8range, expected, atol=1e-6)
    deep = (gray.astype(np.int64) * 8_000_000).astype(np.int32)  # beyond 16 bits: 32-bit full scale
    out = decode_image(encode(Image.fromarray(deep), "TIFF"), CFG).pixels[..., 0]
    np.testing.assert_allclose(out, deep / 4294967295.0, atol=1e-6)
    assert 0.3 < out.max() < 1.0  # neither clipped to white nor crushed to black


def test_exif_rotation_is_applied():
    img = Image.fromarray(np.zeros((10, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    data = encode(img, "JPEG", exif=exif)
    pic = decode_image(data, CFG)
    assert pic.pixels.shape[:2] == (40, 10) and pic.original_hw == (40, 10)
    assert probe_image(data)[1:] == (40, 10)  # header: width, height as stored


@pytest.mark.parametrize("data, kind", [
    (b"", "invalid"),
    (b"<html>not an image</html>", "unsupported"),
    (png_bomb(), "too_large"),
    (part_png()[:200], "invalid"),
])
def test_bad_bytes_raise_clear_errors(data, kind):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, CFG, max_pixels=10_000_000, source="upload.png")
    assert e.value.kind == kind and "upload.png" in str(e.value)


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX", "EPS", "IM", "SGI"])
def test_formats_outside_the_documented_list_are_refused(fmt):
    buf = io.BytesIO()
    if fmt == "EPS":  # Pillow would hand this to Ghostscript
        buf.write(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30 20\n")
    else:
        Image.fromarray(RGB).save(buf, fmt)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(buf.getvalue(), CFG, source="x")
    assert e.value.kind == "unsupported" and "PNG" in str(e.value)


def _big(side: int, seed: int = 1) -> np.ndarray:
    img = cv2.resize(good_part(np.random.default_rng(seed)), (side, side * 3 // 4), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed).integers(-5, 6, img.shape)  # sensor-like noise
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def test_small_images_are_decoded_at_full_size_and_give_identical_canvases():
    img = _big(600)  # less than 4x the 256 px work image: no reduction
    assert decode_hw(img.shape[:2], CFG) is None
    for fmt in ("PNG", "JPEG"):
        data = encode(Image.fromarray(img), fmt)
        reduced, full = decode_image(data, CFG), decode_image(data, None)
        np.testing.assert_array_equal(reduced.pixels, full.pixels)
        np.testing.assert_array_equal(make_canvases(reduced, CFG)[0], make_canvases(full, CFG)[0])


# sides in work sizes: just over 4 x (reduced by area only), 16 x (a JPEG drafted at 1/8 to exactly twice
# the work size), 16 x + 4 (no 1/8 draft: the sides do not divide) and a 6000 px camera frame
@pytest.mark.parametrize("side", [int(4.3 * CFG.size), 16 * CFG.size, 16 * CFG.size + 4, 6000])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_images_are_reduced_at_decode_within_tolerance(side, fmt):
    """Reducing at decode (area to twice the work size; JPEG DC-only draft where the sides divide by 8)
    changes the canvas by at most 0.25/255 on average and 1/255 at any pixel against decoding the full
    image: area filters compose, only the 8-bit intermediate (and libjpeg's rounding) round. A 1/4 or
    1/2 draft is not a box filter: on a 6000 px JPEG it moved pixels by up to 2.5/255, so none is used."""
    img = _big(side)
    data = encode(Image.fromarray(img), fmt)
    reduced, full = decode_image(data, CFG), decode_image(data, None)
    assert reduced.original_hw == full.original_hw == img.shape[:2]
    assert reduced.pixels.shape[0] < img.shape[0] and reduced.pixels.dtype == np.uint8
    assert max(reduced.pixels.shape[:2]) == 2 * CFG.size
    (a, la), (b, lb) = make_canvases(reduced, CFG), make_canvases(full, CFG)
    assert la == lb
    diff = np.abs(a - b) * 255
    assert diff.mean() <= 0.25 and diff.max() <= 1.0


def test_tile_mode_at_native_scale_is_never_reduced():
    cfg = PreprocessConfig(mode="tile")
    data = encode(Image.fromarray(_big(1100)), "PNG")
    assert decode_image(data, cfg).pixels.shape[:2] == (825, 1100)


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_chunk(png: bytes, kind: bytes, data: bytes, before: bytes) -> bytes:
    i = png.index(before) - 4
    return png[:i] + _chunk(kind, data) + png[i:]


def _opencv_calls(monkeypatch) -> list[bytes]:
    import models.imageio as imageio

    calls, real = [], imageio._decode_png_opencv
    monkeypatch.setattr(imageio, "_decode_png_opencv", lambda data, *a: calls.append(data) or real(data, *a))
    return calls


def test_plain_pngs_decode_through_opencv_to_pillows_pixels(monkeypatch):
    from PIL import ImageCms, PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "line camera")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = encode(Image.fromarray(RGB), "PNG")
    cases = {"rgb": rgb, "gray": encode(Image.fromarray(RGB[..., 1]), "PNG"),
             "text": encode(Image.fromarray(RGB), "PNG", pnginfo=text),
             "icc": encode(Image.fromarray(RGB), "PNG", icc_profile=srgb),
             "gamma": _with_chunk(rgb, b"gAMA", (100_000).to_bytes(4, "big"), before=b"IDAT")}  # gamma 1.0
    calls = _opencv_calls(monkeypatch)
    for name, data in cases.items():
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(decode_image(data, None).pixels, expected, err_msg=name)
        np.testing.assert_array_equal(decode_image(data, CFG).pixels, expected, err_msg=name)
    assert len(calls) == 2 * len(cases)


def test_pngs_opencv_would_decode_differently_stay_with_pillow(monkeypatch):
    upright = Image.fromarray(np.zeros((10, 40, 3), np.uint8))
    exif = upright.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    png = encode(upright, "PNG")
    late_exif = _with_chunk(png, b"eXIf", exif.tobytes(), before=b"IEND")  # after the pixels: Pillow reads it then
    cases = {"exif after the pixels": late_exif, "rgba": encode(upright.convert("RGBA"), "PNG"),
             "transparent colour": encode(upright, "PNG", transparency=(0, 0, 0)),
             "palette": encode(upright.convert("P"), "PNG"),
             "16-bit": encode(Image.fromarray(np.zeros((10, 40), np.uint16)), "PNG"),
             "wider than OpenCV reads": encode(Image.fromarray(np.zeros((1, (1 << 20) + 1, 3), np.uint8)), "PNG")}
    calls = _opencv_calls(monkeypatch)
    for name, data in cases.items():
        decode_image(data, CFG, source=name)
    assert calls == []
    assert decode_image(late_exif, CFG).pixels.shape[:2] == (40, 10)  # the orientation is honoured


def test_a_plain_png_with_corrupt_pixel_data_is_a_clear_error(monkeypatch):
    png = encode(Image.fromarray(RGB), "PNG")
    i = png.index(b"IDAT") + 10
    broken = png[:i] + bytes([png[i] ^ 0xFF]) + png[i + 1 :]  # chunks intact, pixel data and its CRC disagree
    calls = _opencv_calls(monkeypatch)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(broken, CFG, source="upload.png")
    assert calls and e.value.kind == "invalid" and "upload.png" in str(e.value)
