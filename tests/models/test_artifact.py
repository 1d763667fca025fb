import json
import struct

import numpy as np
import pytest

from models.artifact import ArtifactError, load_artifact, save_artifact
from models.config import ModelConfig, ScoringConfig
from models.detector import Detector
from models.imageio import list_images
from training.calibrate import CalibrationConfig
from training.fit import FitConfig
from training.pipeline import fit_calibrated


def _scores(det, images):
    return [r.score for r in det.inspect(images)]


def test_round_trip_gives_bit_identical_scores(detector, artifact, dataset):
    images = [detector.read(p) for p in list_images(dataset / "test")[:6]]
    loaded = Detector.from_artifact(artifact, "cpu")
    assert _scores(loaded, images) == _scores(detector, images)
    assert loaded.config == detector.config and loaded.calibration == detector.calibration
    r0, r1 = loaded.inspect(images[:1])[0], detector.inspect(images[:1])[0]
    assert np.array_equal(r0.anomaly_map, r1.anomaly_map)


def test_truncated_artifact_is_rejected(artifact, tmp_path):
    bad = tmp_path / "bad.safetensors"
    data = artifact.read_bytes()
    for cut in (0, 7, 100, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="bad.safetensors"):
            Detector.from_artifact(bad, "cpu")


def test_tampered_artifact_is_rejected(artifact, tmp_path):
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside a weight
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="digest mismatch"):
        load_artifact(bad)


def _rewrite_metadata(src, dst, **changes):
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_wrong_format_version_is_rejected(artifact, tmp_path):
    bad = tmp_path / "old.safetensors"
    _rewrite_metadata(artifact, bad, format="sae-inspect/0")
    with pytest.raises(ArtifactError, match="unsupported artifact format"):
        Detector.from_artifact(bad, "cpu")


def test_wrong_backbone_weights_are_rejected(artifact, tmp_path):
    cfg, meta, tensors = load_artifact(artifact)
    meta["backbone_sha256"] = "0" * 64
    bad = tmp_path / "other_backbone.safetensors"
    save_artifact(bad, cfg, meta, tensors)
    with pytest.raises(ArtifactError, match="backbone weights"):
        Detector.from_artifact(bad, "cpu")


def test_failed_write_leaves_existing_file_intact(artifact, tmp_path, monkeypatch):
    target = tmp_path / "keep.safetensors"
    target.write_bytes(artifact.read_bytes())
    cfg, meta, tensors = load_artifact(artifact)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("models.artifact.os.fsync", boom)
    with pytest.raises(ArtifactError, match="No space left"):
        save_artifact(target, cfg, meta, tensors)
    assert target.read_bytes() == artifact.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]  # no temp file left behind


def test_artifact_written_before_the_context_setting_loads_as_it_scored(dataset, tmp_path):
    """An artifact whose config predates `scoring.context` loads with context 0 (what it computed then),
    scores bit-identically, and a config missing any other field is still refused."""
    detector = fit_calibrated(list_images(dataset / "train" / "good"), ModelConfig(scoring=ScoringConfig(context=0)),
                              FitConfig(steps=60, batch_size=512, max_patches=20_000),
                              CalibrationConfig(alpha=0.1, fraction=0.25, min_count=12), "cpu")
    artifact = tmp_path / "no_context.safetensors"
    detector.save(artifact)
    cfg, meta, tensors = load_artifact(artifact)
    older = json.loads(json.dumps(cfg))
    del older["scoring"]["context"]
    path = tmp_path / "older.safetensors"
    save_artifact(path, older, meta, tensors)
    loaded = Detector.from_artifact(path, "cpu")
    assert loaded.config.scoring.context == 0
    images = [detector.read(p) for p in list_images(dataset / "test")[:4]]
    assert _scores(loaded, images) == _scores(detector, images)
    del older["scoring"]["sigma"]
    save_artifact(path, older, meta, tensors)
    with pytest.raises(ArtifactError, match="sigma"):
        Detector.from_artifact(path, "cpu")
