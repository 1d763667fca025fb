import base64
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bench.images import encode, part_png, png_bomb
from tests.helpers import save_version

GOOD = part_png(101)
BAD = part_png(102, defect="spot")


def metric(client, name: str, **labels) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_ready_and_model_card(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"parts": "test-1"}
    cards = client.get("/v1/models").json()
    assert [c["name"] for c in cards] == ["parts"]
    card = client.get("/v1/models/parts").json()
    assert card["backbone"] == "efficientnet_lite0" and card["alpha"] == 0.1
    assert card["calibration_size"] == len(card["calibration_scores"]) > 0
    # and how many parts those calibration images came from (runs of file names by default: fewer than images)
    assert 0 < card["provenance"]["n_calibration_parts"] < card["calibration_size"]
    assert card["preprocess"]["mode"] == "letterbox"
    # and which canvas it chose from the good images' sizes
    assert card["preprocess"]["size"] == card["provenance"]["canvas_choice"]["chosen"] == 256
    # the card says which scoring the fit chose, and the table it chose from
    selection = card["provenance"]["scoring_selection"]
    assert card["scoring"]["normalize"] == selection["normalize"] in selection["auroc_on_synthetic_defects"]


def test_not_ready_without_models(make_client, models_dir):
    (models_dir / "parts.safetensors").unlink()
    with make_client() as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def test_inspect_multipart_and_raw_body(client):
    r = client.post("/v1/models/parts/inspect", files={"file": ("bad.png", BAD, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "anomalous" and body["score"] > body["threshold"]
    assert body["model_version"] == "test-1" and body["filename"] == "bad.png"
    assert body["regions"] and body["image_width"] == 320 and body["image_height"] == 192
    raw = client.post("/v1/models/parts/inspect", content=GOOD, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["verdict"] == "good"
    assert raw.json()["score"] < body["score"]


def test_heatmaps(client):
    png = client.post("/v1/models/parts/inspect?heatmap=png", content=BAD, headers={"content-type": "image/png"})
    hm = png.json()["heatmap"]
    img = Image.open(io.BytesIO(base64.b64decode(hm["data"])))
    assert img.size == (hm["width"], hm["height"]) == (320, 192) and img.mode == "RGBA"
    alpha_bad = np.asarray(img)[..., 3]
    good = client.post("/v1/models/parts/inspect?heatmap=png", content=GOOD, headers={"content-type": "image/png"})
    alpha_good = np.asarray(Image.open(io.BytesIO(base64.b64decode(good.json()["heatmap"]["data"]))))[..., 3]
    # the overlay is transparent where the map is well below the pixel threshold: a good part stays untinted
    assert (alpha_good == 0).mean() > 0.9 and (alpha_bad == 255).any()
    raw = client.post("/v1/models/parts/inspect?heatmap=raw", content=BAD, headers={"content-type": "image/png"})
    hm = raw.json()["heatmap"]
    values = np.frombuffer(base64.b64decode(hm["data"]), "<f4").reshape(hm["height"], hm["width"])
    score = raw.json()["score"]  # the image score is the mean of the map's top 1% (default)
    top = np.sort(values.ravel())[-max(1, values.size // 100):]
    assert values.max() >= score and top.mean() == pytest.approx(score, rel=0.1)
    assert client.post("/v1/models/parts/inspect?heatmap=jpeg", content=BAD,
                       headers={"content-type": "image/png"}).status_code == 422


def test_batch(client):
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate([GOOD, BAD, GOOD])]
    r = client.post("/v1/models/parts/inspect/batch", files=files)
    assert r.status_code == 200
    verdicts = [x["verdict"] for x in r.json()["results"]]
    assert verdicts == ["good", "anomalous", "good"]


def test_batch_with_bad_files_answers_per_image_and_counts_what_happened(client):
    def count(text: str, outcome: str) -> float:
        import re

        m = re.search(rf'sae_inspect_requests_total{{model="parts",outcome="{outcome}"}} (\S+)', text)
        return float(m.group(1)) if m else 0.0

    before = client.get("/metrics").text
    files = [("files", ("a.png", GOOD, "image/png")), ("files", ("junk.png", b"not an image", "image/png")),
             ("files", ("b.png", BAD, "image/png")), ("files", ("cut.png", GOOD[:200], "image/png"))]
    r = client.post("/v1/models/parts/inspect/batch?explain=true", files=files)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x.get("verdict") for x in res] == ["good", None, "anomalous", None]
    assert [x.get("status") for x in res] == [None, 415, None, 422]
    assert res[1]["filename"] == "junk.png" and res[1]["error"] == "unsupported_media_type" and res[1]["detail"]
    assert res[2]["explanation"] is not None  # explain=true is honoured on a batch
    after = client.get("/metrics").text
    assert count(after, "good") - count(before, "good") == 1
    assert count(after, "anomalous") - count(before, "anomalous") == 1
    assert count(after, "unsupported") - count(before, "unsupported") == 1
    assert count(after, "bad_image") - count(before, "bad_image") == 1


@pytest.mark.parametrize("data, ctype, status", [
    (b"", "image/png", 422),
    (b"\x00\x01garbage" * 50, "image/png", 415),
    (part_png()[:300], "image/png", 422),
    (png_bomb(), "image/png", 413),
    (b"<html><body>hi</body></html>", "text/html", 415),
    (b'{"image": 1}', "application/json", 415),
])
def test_bad_inputs_get_4xx_json_and_service_keeps_working(client, data, ctype, status):
    r = client.post("/v1/models/parts/inspect", content=data, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"] and r.json()["detail"] and "Traceback" not in r.text
    assert client.post("/v1/models/parts/inspect", content=GOOD,
                       headers={"content-type": "image/png"}).status_code == 200


def test_body_too_large_and_unknown_models(make_client):
    with make_client(max_body_bytes=4096) as c:
        r = c.post("/v1/models/parts/inspect", content=b"x" * 10_000, headers={"content-type": "image/png"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/v1/models/parts/inspect", content=iter([b"x" * 3000] * 3), headers={"content-type": "image/png"})
        assert r.status_code == 413  # chunked, no Content-Length
        for name in ["nope", "..%2Fparts", "parts.safetensors%2F..", "%2E%2E"]:
            r = c.post(f"/v1/models/{name}/inspect", content=GOOD[:100], headers={"content-type": "image/png"})
            assert r.status_code == 404, name
        assert c.post("/v1/models/parts/inspect", files={"nofile": (None, "text")}).status_code == 422


def test_metrics_follow_requests(client):
    before_bad = metric(client, "sae_inspect_anomalies_total", model="parts")
    before_good = metric(client, "sae_inspect_requests_total", model="parts", outcome="good")
    client.post("/v1/models/parts/inspect", content=BAD, headers={"content-type": "image/png"})
    client.post("/v1/models/parts/inspect", content=GOOD, headers={"content-type": "image/png"})
    client.post("/v1/models/parts/inspect", content=b"junk", headers={"content-type": "image/png"})
    assert metric(client, "sae_inspect_anomalies_total", model="parts") == before_bad + 1
    assert metric(client, "sae_inspect_requests_total", model="parts", outcome="good") == before_good + 1
    assert metric(client, "sae_inspect_requests_total", model="parts", outcome="unsupported") >= 1
    assert metric(client, "sae_inspect_request_duration_seconds_count", stage="inference") >= 2
    assert metric(client, "sae_inspect_model_info", model="parts", version="test-1") == 1
    assert metric(client, "sae_inspect_threshold", model="parts") > 0
    bound = client.get("/v1/models/parts").json()["false_alarm_rate_90"]
    assert metric(client, "sae_inspect_false_alarm_rate_90", model="parts") == pytest.approx(bound)
    assert metric(client, "process_resident_memory_bytes") > 0


def test_admin_key_enforced(client, make_client):
    assert client.post("/v1/models/reload").status_code == 401
    assert client.post("/v1/models/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/v1/models/parts/reload", headers={"authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200 and ok.json()["version"] == "test-1"
    assert "s3cret-key" not in client.get("/metrics").text
    with make_client() as no_key:
        r = no_key.post("/v1/models/reload", headers={"authorization": "Bearer s3cret-key"})
        assert r.status_code == 403 and "disabled" in r.json()["detail"]


def test_reload_new_version_and_reject_bad_artifact(client, detector, models_dir):
    auth = {"authorization": "Bearer s3cret-key"}
    save_version(detector, models_dir / "parts.safetensors", "test-2")
    assert client.post("/v1/models/parts/reload", headers=auth).json()["version"] == "test-2"
    assert client.post("/v1/models/parts/inspect", content=GOOD,
                       headers={"content-type": "image/png"}).json()["model_version"] == "test-2"
    data = (models_dir / "parts.safetensors").read_bytes()
    (models_dir / "parts.safetensors").write_bytes(data[: len(data) // 2])
    r = client.post("/v1/models/parts/reload", headers=auth)
    assert r.status_code == 409 and "still serving version test-2" in r.json()["detail"]
    assert str(models_dir) not in r.text  # no server paths in replies
    assert client.post("/v1/models/parts/inspect", content=GOOD,
                       headers={"content-type": "image/png"}).json()["model_version"] == "test-2"
    assert metric(client, "sae_inspect_model_reloads_total", model="parts", outcome="failed") == 1
    # a new model appears with a rescan
    save_version(detector, models_dir / "line2.safetensors", "l2-1")
    outcomes = client.post("/v1/models/reload", headers=auth).json()["outcomes"]
    assert outcomes["line2"] == "loaded"
    assert {m["name"] for m in client.get("/v1/models").json()} == {"parts", "line2"}


def test_service_score_equals_cli_score(client, models_dir, tmp_path):
    path = tmp_path / "probe.png"
    path.write_bytes(BAD)
    out = subprocess.run([sys.executable, "-m", "training.cli", "score", str(models_dir / "parts.safetensors"),
                          str(path), "--json", "--device", "cpu"], capture_output=True, text=True, check=True)
    import json

    cli = json.loads(out.stdout.splitlines()[0])
    served = client.post("/v1/models/parts/inspect", content=BAD, headers={"content-type": "image/png"}).json()
    assert cli["score"] == served["score"] and cli["p_value"] == served["p_value"]
    assert cli["verdict"] == served["verdict"]
    # evaluate scores through the same path (its backbone in the fit's runtime, ONNX Runtime on CPU, checked
    # equal to PyTorch's): the same image in an MVTec layout gets the same score within the export tolerance
    from models.decision import score_scale
    from models.detector import Detector
    from training.evaluate import evaluate

    (tmp_path / "cat" / "test" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "test" / "scratch").mkdir()
    (tmp_path / "cat" / "test" / "good" / "g.png").write_bytes(GOOD)
    (tmp_path / "cat" / "test" / "scratch" / "probe.png").write_bytes(BAD)
    det = Detector.from_artifact(models_dir / "parts.safetensors", "cpu")
    _, details = evaluate(det, tmp_path / "cat")
    scale = score_scale(det.calibration.threshold, np.asarray(det.calibration.scores))
    evaluated = float(details["scores"][details["paths"].index(tmp_path / "cat" / "test" / "scratch" / "probe.png")])
    assert abs(evaluated - served["score"]) <= 1e-3 * scale  # the export tolerance (training/export.py)


def test_openapi_lists_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models/{name}/inspect", "/v1/models/{name}/inspect/batch", "/v1/models"} <= set(paths)


def test_legal_odd_images_are_scored(client):
    rgb = np.random.default_rng(3).integers(0, 255, (40, 90, 3), dtype=np.uint8)
    for data in [encode(Image.fromarray(rgb[..., 0]), "JPEG"), encode(Image.fromarray(rgb).convert("P"), "PNG"),
                 encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 200), "PNG"),
                 encode(Image.fromarray(np.zeros((1, 1, 3), np.uint8)), "PNG")]:
        r = client.post("/v1/models/parts/inspect", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text


def test_alpha_query_moves_the_operating_point_and_is_reported(client, detector):
    from models.decision import conformal_threshold

    image, hdr = part_png(3), {"content-type": "image/png"}
    base = client.post("/v1/models/parts/inspect", content=image, headers=hdr).json()
    assert base["alpha"] == detector.calibration.alpha and base["threshold"] == detector.calibration.threshold
    loose = client.post("/v1/models/parts/inspect?alpha=0.5", content=image, headers=hdr).json()
    expected = conformal_threshold(np.asarray(detector.calibration.scores), 0.5)
    assert loose["alpha"] == 0.5 and loose["threshold"] == pytest.approx(expected)
    assert loose["score"] == base["score"] and loose["verdict"] == ("anomalous" if base["score"] > expected else "good")
    assert client.post("/v1/models/parts/inspect?alpha=1.5", content=image, headers=hdr).status_code == 422


def test_drift_and_burst_evidence_are_exported_and_reset_on_reload(make_client, detector, models_dir):
    """Every inspection feeds the p-value histogram; a run of anomalies raises the burst evidence past the
    alarm level and not the drift evidence; a reload (new calibration) starts both from zero."""
    hdr, auth = {"content-type": "image/png"}, {"authorization": "Bearer k"}
    # four different defective parts, each scoring above all before it, so each online p-value is <= alpha
    # (an identical image sent twice would rank as a tie with itself, as online conformal p-values must)
    bad = sorted((part_png(300 + i, defect="spot") for i in range(4)),
                 key=lambda b: detector.inspect([detector.decode(b)])[0].score)
    with make_client(api_key="k", drift_threshold=100.0) as c:
        assert metric(c, "sae_inspect_drift_alarm_level") == 2.0
        for _ in range(3):
            assert c.post("/v1/models/parts/inspect", content=GOOD, headers=hdr).json()["verdict"] == "good"
        assert metric(c, "sae_inspect_p_value_count", model="parts") == 3
        for b in bad:
            assert c.post("/v1/models/parts/inspect", content=b, headers=hdr).json()["verdict"] == "anomalous"
        assert metric(c, "sae_inspect_p_value_count", model="parts") == 7
        assert metric(c, "sae_inspect_burst_evidence", model="parts") >= 2.0  # at the alarm level
        assert metric(c, "sae_inspect_drift_evidence", model="parts") < 2.0  # defects are not drift
        save_version(detector, models_dir / "parts.safetensors", "test-2")
        assert c.post("/v1/models/parts/reload", headers=auth).json()["version"] == "test-2"
        assert metric(c, "sae_inspect_burst_evidence", model="parts") == 0
        assert metric(c, "sae_inspect_drift_evidence", model="parts") == 0


def test_a_model_is_warmed_up_with_a_full_batch_before_it_serves(make_client, monkeypatch):
    from models.detector import Detector

    sizes: list[int] = []
    inspect = Detector.inspect
    monkeypatch.setattr(Detector, "inspect", lambda self, images, *a, **k: sizes.append(len(images))
                        or inspect(self, images, *a, **k))
    with make_client(max_batch_size=3) as c:
        assert c.app.state.registry.models["parts"].batcher.max_batch == 3
        assert sizes == [3]  # the load's one warm-up batch, at the size the batcher will run
