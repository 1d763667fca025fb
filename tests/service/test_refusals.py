"""No silent wrong answer: settings and inputs the product cannot honour are refused with a clear
error, every reply's numbers are finite, every response (500 included) is counted and tagged."""

from __future__ import annotations

import asyncio
import json
import math
import socket

import numpy as np
import pytest

from bench.images import float_tiff, part_png
from bench.servers import running_server
from models.decision import false_alarm_bound
from service.settings import Settings

HDR = {"content-type": "image/png"}


def metric(client, name: str, **labels) -> float:
    for line in client.get("/metrics").text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_alpha_below_the_calibration_minimum_is_refused_naming_it(client, detector):
    n = len(detector.calibration.scores)
    card = client.get("/v1/models/parts").json()
    assert card["min_alpha"] == pytest.approx(1 / (n + 1)) and card["requested_alpha"] <= card["alpha"]
    assert card["false_alarm_rate_90"] == pytest.approx(false_alarm_bound(n, card["alpha"], 0.9))
    assert card["false_alarm_rate_90"] > card["alpha"]  # one model's own rate: above the average at 90 %
    too_small = 0.5 / (n + 1)
    for url in ("/v1/models/parts/inspect", "/v1/models/parts/inspect/batch"):
        kw = {"files": {"file": ("a.png", part_png(1, "spot"), "image/png")}}
        r = client.post(f"{url}?alpha={too_small}", **kw)
        assert r.status_code == 422, r.text
        assert f"1/(n+1) = {1 / (n + 1):.6g}" in r.json()["detail"] and r.json()["request_id"]
    # exactly the minimum is supported: the threshold is the largest calibration score, and a defect is found
    ok = client.post(f"/v1/models/parts/inspect?alpha={1 / (n + 1)!r}", content=part_png(1, "spot"), headers=HDR)
    assert ok.status_code == 200 and ok.json()["threshold"] == detector.calibration.scores[-1]
    assert ok.json()["verdict"] == "anomalous"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_pixel_is_refused_and_metrics_stay_finite(client, bad):
    r = client.post("/v1/models/parts/inspect", content=float_tiff(bad), headers={"content-type": "image/tiff"})
    assert r.status_code == 422 and "non-finite" in r.json()["detail"]
    ok = client.post("/v1/models/parts/inspect", content=float_tiff(None), headers={"content-type": "image/tiff"})
    assert ok.status_code == 200
    body = ok.json()
    assert all(math.isfinite(body[k]) for k in ("score", "threshold", "p_value", "alpha"))
    text = client.get("/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("sae_inspect_image_score_ratio")]
    assert values and all(math.isfinite(v) for v in values)


def test_library_refuses_non_finite_arrays(detector):
    img = np.full((64, 64, 3), 0.5, np.float32)
    img[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        detector.inspect([img])


def test_a_500_is_counted_and_carries_a_request_id(client, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("injected fault")

    monkeypatch.setattr("service.routes.build_reply", boom)
    before = metric(client, "sae_inspect_http_responses_total", code="500")
    r = client.post("/v1/models/parts/inspect", content=part_png(2), headers=HDR)
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert r.headers["x-request-id"] == r.json()["request_id"]
    assert metric(client, "sae_inspect_http_responses_total", code="500") == before + 1
    monkeypatch.undo()
    assert client.post("/v1/models/parts/inspect", content=part_png(2), headers=HDR).status_code == 200


def test_one_failing_item_fails_alone_in_its_micro_batch(detector):
    """A batch whose model call raises for one image: that image's request fails, the others are scored."""
    from concurrent.futures import ThreadPoolExecutor

    from service.batcher import MicroBatcher
    from service.metrics import Metrics

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def inspect(self, images):
            if any(float(np.asarray(im).mean()) == 0.0 for im in images):
                raise RuntimeError("injected: this image breaks the model")
            return self.inner.inspect(images)

    images = [np.full((64, 64, 3), v, np.uint8) for v in (120, 0, 140, 160)]

    async def run() -> list:
        b = MicroBatcher("parts", Flaky(detector), ThreadPoolExecutor(1), Metrics(), max_batch=8, max_wait_s=0.2,
                         queue_size=16, arriving=lambda: 1)
        b.start()
        out = await asyncio.gather(*(b.submit(im) for im in images), return_exceptions=True)
        await b.drain_and_stop()
        return out

    out = asyncio.run(run())
    assert isinstance(out[1], RuntimeError)
    assert [math.isfinite(o.inspection.score) for i, o in enumerate(out) if i != 1] == [True] * 3
    assert max(o.batch_size for i, o in enumerate(out) if i != 1) > 1  # they did share a batch


def test_head_on_health_routes(client):
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 200


def _raw(port: int, request: bytes) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break  # the server closed the connection
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def test_content_length_with_transfer_encoding_is_refused_and_closed(models_dir):
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0)
    with running_server(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        smuggle = (b"POST /v1/models/parts/inspect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                   b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                   b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _raw(port, smuggle)  # returns only once the server has closed the connection
        assert head.startswith("HTTP/1.1 400") and "connection: close" in head.lower()
        assert json.loads(body)["error"] == "bad_request"
        assert b"HTTP/1.1" not in body  # the smuggled second request was never answered
        # protocol-level errors are JSON too
        head, body = _raw(port, b"NOT AN HTTP REQUEST\r\n\r\n")
        assert head.startswith("HTTP/1.1 400") and json.loads(body)["error"] == "bad_request"
