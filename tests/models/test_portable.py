"""ONNX export: one sealed file that scores, maps and decides like the PyTorch detector."""

from pathlib import Path

import numpy as np
import pytest

from models.artifact import ArtifactError
from models.decision import conformal_threshold
from models.imageio import list_images
from models.portable import DIGEST_KEY, META_KEY, PortableDetector, load_scorer
from training.export import TOLERANCE, export_onnx

pytest.importorskip("onnxruntime")
REAL = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "magnetic_tile"


@pytest.fixture(scope="module")
def exported(detector, artifact, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "parts.onnx"
    summary = export_onnx(detector, artifact, out, list_images(dataset / "train" / "good")[:8])
    assert summary["images"] == 8 and summary["max_score_gap_over_scale"] <= TOLERANCE
    return out


def _compare(detector, portable, pictures):
    a, b = detector.inspect(pictures), portable.inspect(pictures)
    thr = detector.calibration.threshold
    for x, y in zip(a, b, strict=True):
        assert abs(x.score - y.score) <= TOLERANCE * thr
        assert x.anomalous == y.anomalous and x.p_value == pytest.approx(y.p_value, abs=0.02)
        # maps agree to float rounding except around a patch whose k-th and (k+1)-th latents nearly tie, where
        # the two runtimes' rounding may pick different atoms: a local difference, bounded, scores unaffected
        gap = np.abs(x.anomaly_map - y.anomaly_map)
        assert (gap <= 1e-3 * thr).mean() >= 0.98 and gap.max() <= 0.1 * thr, (gap.max() / thr)
        assert x.layout == y.layout


def test_onnx_runtime_matches_pytorch_on_generated_parts(detector, exported, dataset):
    portable = PortableDetector(exported)
    pictures = [detector.read(p) for p in list_images(dataset / "test")]
    _compare(detector, portable, pictures)
    assert sum(r.anomalous for r in portable.inspect(pictures)) > 0  # the defects are found


@pytest.mark.skipif(not REAL.is_dir(), reason="shared datasets not present")
def test_onnx_runtime_matches_pytorch_on_real_images(detector, exported):
    portable = PortableDetector(exported)
    files = sorted((REAL / "test").rglob("*.jpg"))[::40][:12]
    _compare(detector, portable, [detector.read(p) for p in files])


def test_metadata_round_trip(detector, artifact, exported):
    import hashlib

    portable = PortableDetector(exported)
    assert portable.config == detector.config
    assert portable.calibration == detector.calibration
    assert portable.version == detector.version
    assert portable.meta["artifact_sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()


def test_alpha_changes_after_export_without_reexport(detector, exported, dataset):
    scores = np.asarray(detector.calibration.scores)
    loose = load_scorer(exported, alpha=0.2)
    assert loose.calibration.alpha == 0.2
    assert loose.calibration.threshold == conformal_threshold(scores, 0.2) < detector.calibration.threshold
    r = loose.inspect([detector.read(list_images(dataset / "test" / "good")[0])])[0]
    assert r.alpha == 0.2 and r.threshold == loose.calibration.threshold
    same = load_scorer(exported)
    assert same.calibration.alpha == detector.calibration.alpha


def test_tampered_exports_are_refused(exported, tmp_path):
    import onnx

    data = bytearray(exported.read_bytes())
    flipped = tmp_path / "flipped.onnx"
    data[len(data) // 2] ^= 0x01  # one bit inside the weights
    flipped.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="digest|not an ONNX"):
        PortableDetector(flipped)
    model = onnx.load(exported)
    for p in model.metadata_props:
        if p.key == META_KEY:
            p.value = p.value.replace('"threshold": ', '"threshold": 1')  # a forged operating point
    forged = tmp_path / "forged.onnx"
    onnx.save(model, forged)
    with pytest.raises(ArtifactError, match="digest"):
        PortableDetector(forged)
    model = onnx.load(exported)
    kept = [p for p in model.metadata_props if p.key != DIGEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "unsealed.onnx")
    with pytest.raises(ArtifactError, match="not an SAE Inspect export"):
        PortableDetector(tmp_path / "unsealed.onnx")


def test_export_refuses_to_write_beyond_tolerance_and_names_the_image(detector, artifact, dataset, tmp_path):
    out = tmp_path / "never.onnx"
    image = list_images(dataset / "train" / "good")[0]
    with pytest.raises(ArtifactError, match=image.name):
        export_onnx(detector, artifact, out, [image], tolerance=-1.0)  # nothing can pass a negative tolerance
    assert not out.exists()


def test_service_serves_an_exported_model(make_client, models_dir, exported, dataset):
    import shutil

    from bench.images import part_png

    image = part_png(7, defect="spot")
    with make_client(api_key="k") as client:
        reference = client.post("/v1/models/parts/inspect", content=image, headers={"content-type": "image/png"}).json()
        assert client.get("/v1/models/parts").json()["runtime"] == "pytorch"
        (models_dir / "parts.safetensors").unlink()  # hot swap: the exported file replaces the artifact
        shutil.copy(exported, models_dir / "parts.onnx")
        outcomes = client.post("/v1/models/reload", headers={"authorization": "Bearer k"}).json()["outcomes"]
        assert outcomes == {"parts": "loaded"}
        card = client.get("/v1/models/parts").json()
        assert card["runtime"] == "onnxruntime"
        r = client.post("/v1/models/parts/inspect", content=image, headers={"content-type": "image/png"})
        assert r.status_code == 200
        got = r.json()
        assert got["verdict"] == reference["verdict"] and got["alpha"] == reference["alpha"]
        assert abs(got["score"] - reference["score"]) <= TOLERANCE * reference["threshold"]
        assert client.post("/v1/models/parts/inspect?explain=true", content=image,
                           headers={"content-type": "image/png"}).status_code == 422
        assert 'sae_inspect_model_info{backbone=' in client.get("/metrics").text


def test_alpha_below_what_the_calibration_supports_is_refused_by_the_reader(detector, exported):
    from models.decision import UnsupportedAlpha

    n = len(detector.calibration.scores)
    with pytest.raises(UnsupportedAlpha, match=f"with n = {n} calibration images"):
        load_scorer(exported, alpha=0.5 / (n + 1))
    assert load_scorer(exported, alpha=1 / (n + 1)).calibration.threshold == detector.calibration.scores[-1]


TORCH_BLOCKED = r'''
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ModuleNotFoundError(f"blocked for this test: {name}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
onnx_path, models_dir, image_path = sys.argv[1:4]
from models.portable import load_scorer
det = load_scorer(onnx_path)
r = det.inspect([det.read(image_path)])[0]
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(models_dir=models_dir, watch_interval_s=0))) as c:
    body = c.post("/v1/models/parts/inspect", content=open(image_path, "rb").read(),
                  headers={"content-type": "image/png"}).json()
    card = c.get("/v1/models/parts").json()
    metrics_ok = c.get("/metrics").status_code == 200
print(json.dumps({"reader": r.score, "service": body["score"], "runtime": card["runtime"], "metrics": metrics_ok,
                  "torch_loaded": "torch" in sys.modules}))
'''


def test_onnx_reader_and_service_run_with_torch_blocked(exported, detector, dataset, tmp_path):
    """An ONNX-only install: the reader and the whole service score an export with `import torch` failing."""
    import json
    import shutil
    import subprocess
    import sys

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(exported, models / "parts.onnx")
    image = list_images(dataset / "test" / "good")[0]
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", TORCH_BLOCKED, str(exported), str(models), str(image)], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["runtime"] == "onnxruntime" and got["metrics"] and not got["torch_loaded"]
    expected = detector.inspect([detector.read(image)])[0].score
    assert got["reader"] == got["service"] and abs(got["reader"] - expected) <= TOLERANCE * abs(expected)


def test_service_prefers_the_export_beside_its_artifact_on_cpu_and_explains_through_it(
        make_client, models_dir, exported, detector):
    """Both files for one model: on CPU the ONNX export serves (SAE_INSPECT_PREFER_RUNTIME=auto), explain
    loads the artifact beside it, scores match PyTorch within the export tolerance; asked for, PyTorch
    serves; an export of another artifact version is never served."""
    import shutil

    from bench.images import part_png
    from tests.helpers import save_version

    image, hdr = part_png(8, defect="scratch"), {"content-type": "image/png"}
    shutil.copy(exported, models_dir / "parts.onnx")
    with make_client(prefer_runtime="pytorch") as client:
        assert client.get("/v1/models/parts").json()["runtime"] == "pytorch"
        reference = client.post("/v1/models/parts/inspect", content=image, headers=hdr).json()
    with make_client(api_key="k") as client:
        assert client.get("/v1/models/parts").json()["runtime"] == "onnxruntime"
        got = client.post("/v1/models/parts/inspect", content=image, headers=hdr).json()
        assert abs(got["score"] - reference["score"]) <= TOLERANCE * reference["threshold"]
        assert got["verdict"] == reference["verdict"]
        ex = client.post("/v1/models/parts/inspect?explain=true", content=image, headers=hdr)
        assert ex.status_code == 200 and ex.json()["explanation"]["regions"], ex.text[:300]
        assert abs(ex.json()["score"] - reference["score"]) <= TOLERANCE * reference["threshold"]
        # a new artifact version lands without a new export: the export is stale, the artifact serves
        save_version(detector, models_dir / "parts.safetensors", "test-2")
        assert client.post("/v1/models/reload", headers={"authorization": "Bearer k"}).json()["outcomes"] == {
            "parts": "loaded"}
        card = client.get("/v1/models/parts").json()
        assert card["runtime"] == "pytorch" and card["version"] == "test-2"
        assert "another version" in client.get("/readyz").text


def test_stale_export_is_refused_when_read_with_its_companion(exported, detector, tmp_path):
    from models.portable import StaleExport
    from tests.helpers import save_version

    other = save_version(detector, tmp_path / "parts.safetensors", "other")
    with pytest.raises(StaleExport, match="another version"):
        PortableDetector(exported, companion=other)
