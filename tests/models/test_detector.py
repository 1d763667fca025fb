import cv2
import numpy as np
import pytest

from models.imageio import list_images
from models.preprocess import to_original
from training.metrics import auroc


def test_defective_parts_score_above_good_ones(detector, dataset):
    good = [detector.read(p) for p in list_images(dataset / "test" / "good")]
    bad_paths = [p for p in list_images(dataset / "test") if p.parent.name != "good"]
    results = detector.inspect(good + [detector.read(p) for p in bad_paths])
    scores = np.array([r.score for r in results])
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad_paths))]
    value = auroc(labels, scores)
    print(f"image AUROC on generated parts: {value:.3f}")
    assert value >= 0.85

    hits = 0
    for p, r in zip(bad_paths, results[len(good):], strict=True):
        mask = cv2.imread(str(dataset / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"), 0)
        full = to_original(r.anomaly_map, r.layout)
        y, x = np.unravel_index(full.argmax(), full.shape)
        hits += cv2.dilate(mask, np.ones((15, 15), np.uint8))[y, x] > 0
    print(f"anomaly-map peak inside the injected defect: {hits}/{len(bad_paths)}")
    assert hits >= 0.75 * len(bad_paths)


def test_inspection_fields_are_consistent(detector, dataset):
    r = detector.inspect([detector.read(list_images(dataset / "test" / "spot")[0])])[0]
    assert r.anomalous == (r.score > r.threshold)
    assert 0 < r.p_value <= 1
    assert r.anomaly_map.shape == r.layout.work_hw


def test_detector_is_immutable_and_a_clone_keeps_everything(detector):
    import pytest
    import torch

    with pytest.raises(AttributeError, match="immutable"):
        detector.calibration = None
    with pytest.raises(TypeError):
        detector.meta["version"] = "patched"
    clone = detector.replace(meta={**detector.meta, "version": "v2"})
    assert clone.version == "v2" and detector.version == "test-1"
    assert clone.atlas is detector.atlas and clone.calibration == detector.calibration
    assert clone.config == detector.config and torch.equal(clone.feat_mean, detector.feat_mean)
    with pytest.raises(TypeError, match="unknown"):
        detector.replace(threshold=1.0)


@pytest.mark.parametrize("mode", ["letterbox", "tile"])
def test_candidate_maps_of_one_pass_equal_each_scoring_alone(detector, mode):
    """The scoring choice scores every candidate from one backbone pass: each channel is the map that
    candidate gives by itself, tiles stitched the same way."""
    import dataclasses

    from models.config import NORMALIZE_CHOICES

    det = detector.replace(config=dataclasses.replace(
        detector.config, preprocess=dataclasses.replace(detector.config.preprocess, mode=mode)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 420, 3), dtype=np.uint8) for _ in range(3)]
    together = det.maps(images, lambda c: det.candidate_canvas_maps(c, NORMALIZE_CHOICES))
    for j, cand in enumerate(NORMALIZE_CHOICES):
        alone = det.with_scoring(normalize=cand).maps(images)
        for (m, layout), (a, layout_a) in zip(together, alone, strict=True):
            assert m.shape == a.shape + (len(NORMALIZE_CHOICES),) and layout == layout_a
            np.testing.assert_allclose(m[..., j], a, rtol=1e-5, atol=1e-5)
