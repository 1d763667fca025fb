"""Property-based fuzzing of image decoding and request parsing (bounded examples)."""

import numpy as np
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.images import part_png
from models.config import PreprocessConfig
from models.imageio import ImageDecodeError, decode_image

SEED_PNG = part_png(5)


def _check(data: bytes) -> None:
    try:
        pic = decode_image(data, PreprocessConfig(), max_pixels=4_000_000)
    except ImageDecodeError as e:
        assert e.kind in ("invalid", "unsupported", "too_large")
        return
    a = pic.pixels
    assert a.ndim == 3 and a.shape[2] == 3 and a.dtype in (np.uint8, np.float32)
    assert np.isfinite(a).all() and a.min() >= 0 and (a.dtype == np.uint8 or a.max() <= 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_decode_arbitrary_bytes_only_raises_decode_errors(data):
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SEED_PNG) - 1), st.integers(0, 255)), min_size=1, max_size=20),
       st.integers(16, len(SEED_PNG)))
def test_decode_mutated_png_only_raises_decode_errors(flips, cut):
    data = bytearray(SEED_PNG[:cut])
    for i, v in flips:
        if i < len(data):
            data[i] = v
    _check(bytes(data))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ctype=st.sampled_from(["image/png", "multipart/form-data", "multipart/form-data; boundary=x",
                              "application/json", "", "image/", "text/plain; charset=utf-8"]),
       body=st.binary(max_size=2048))
def test_request_parsing_never_answers_5xx(client: TestClient, ctype, body):
    r = client.post("/v1/models/parts/inspect", content=body, headers={"content-type": ctype} if ctype else {})
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or r.json()["error"]
