import numpy as np
import pytest
from PIL import Image

from bench.images import encode, part_png, png_bomb
from models.imageio import ImageDecodeError, decode_image


def test_modes_all_decode_to_float_rgb():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    cases = {
        "rgb png": encode(Image.fromarray(rgb), "PNG"),
        "gray jpeg": encode(Image.fromarray(rgb[..., 0]), "JPEG"),
        "rgba png": encode(Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "palette png": encode(Image.fromarray(rgb).convert("P"), "PNG"),
        "16-bit png": encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"),
        "cmyk jpeg": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "bmp": encode(Image.fromarray(rgb), "BMP"),
        "tiff": encode(Image.fromarray(rgb), "TIFF"),
    }
    for name, data in cases.items():
        a = decode_image(data, source=name)
        assert a.shape == (20, 30, 3) and a.dtype == np.float32, name
        assert 0.0 <= a.min() and a.max() <= 1.0, name


def test_16_bit_keeps_full_range():
    a = np.array([[0, 65535]], np.uint16)
    out = decode_image(encode(Image.fromarray(a), "PNG"))
    assert out[0, 0, 0] == 0.0 and out[0, 1, 0] == pytest.approx(1.0)


def test_exif_rotation_is_applied():
    img = Image.fromarray(np.zeros((10, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    assert decode_image(encode(img, "JPEG", exif=exif)).shape[:2] == (40, 10)


@pytest.mark.parametrize("data, kind", [
    (b"", "invalid"),
    (b"<html>not an image</html>", "unsupported"),
    (png_bomb(), "too_large"),
    (part_png()[:200], "invalid"),
])
def test_bad_bytes_raise_clear_errors(data, kind):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, max_pixels=10_000_000, source="upload.png")
    assert e.value.kind == kind and "upload.png" in str(e.value)
