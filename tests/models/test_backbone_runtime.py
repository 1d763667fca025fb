"""models/backbone_runtime.py: the offline passes' backbone in ONNX Runtime computes the eager backbone's
maps, is refused when it does not, and a fit through it saves what the eager detector scores."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from models import backbone_runtime
from models.backbone_runtime import TOLERANCE, RuntimeBackbone, max_relative_difference, offline_backbone
from models.decision import score_scale
from models.detector import Detector
from models.imageio import list_images
from models.preprocess import make_canvases
from training.calibrate import score_files


@pytest.fixture
def fresh_cache():
    offline_backbone.cache_clear()
    yield
    offline_backbone.cache_clear()


def _canvases(detector: Detector, dataset, n: int = 3) -> torch.Tensor:
    pics = [detector.read(p) for p in list_images(dataset / "test" / "scratch")[:n]]
    x = np.concatenate([make_canvases(p, detector.config.preprocess)[0] for p in pics])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (detector.config.backbone.mean,
                                                             detector.config.backbone.std))
    return (torch.from_numpy(x).permute(0, 3, 1, 2) - mean) / std


def test_runtime_backbone_computes_the_eager_maps_on_real_canvases(detector, dataset, fresh_cache):
    run = offline_backbone(detector.backbone, detector.config.preprocess.size, "cpu")
    assert run.runtime == "onnxruntime" and isinstance(run.module, RuntimeBackbone)
    x = _canvases(detector, dataset)
    eager, fast = detector.backbone(x), run.module(x)
    assert [m.shape for m in fast] == [m.shape for m in eager]
    assert max_relative_difference(eager, fast) <= TOLERANCE
    assert run.module.weights_sha256 == detector.backbone.weights_sha256  # saves the same identity


def test_without_onnxruntime_the_eager_backbone_runs(detector, fresh_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    run = offline_backbone(detector.backbone, detector.config.preprocess.size, "cpu")
    assert run.module is detector.backbone and run.runtime == "pytorch (onnxruntime not installed)"


def test_a_session_that_disagrees_is_refused(detector, fresh_cache, monkeypatch):
    real = backbone_runtime._session

    class Off:  # the real session, every map scaled by 1.01
        def __init__(self, s):
            self.s = s

        def get_inputs(self):
            return self.s.get_inputs()

        def run(self, names, feeds):
            return [m * 1.01 for m in self.s.run(names, feeds)]

    monkeypatch.setattr(backbone_runtime, "_session", lambda bb, size: Off(real(bb, size)))
    run = offline_backbone(detector.backbone, detector.config.preprocess.size, "cpu")
    assert run.module is detector.backbone and run.runtime.startswith("pytorch (ONNX Runtime differed by 0.01")


def test_the_fit_ran_in_onnxruntime_and_the_eager_artifact_scores_as_calibrated(detector, artifact, dataset):
    assert detector.meta["fit_backbone_runtime"] == "onnxruntime"
    offline = detector.offline()
    assert isinstance(offline.backbone, RuntimeBackbone)
    assert offline.offline().backbone is offline.backbone  # an offline detector is already offline
    loaded = Detector.from_artifact(artifact, "cpu")
    paths = list_images(dataset / "test" / "good")[:4]
    _, eager, _ = score_files(loaded, paths)
    _, fast, _ = score_files(loaded.offline(), paths)
    scale = score_scale(loaded.calibration.threshold, np.asarray(loaded.calibration.scores))
    assert np.max(np.abs(eager - fast)) <= 1e-3 * scale  # the export tolerance (training/export.py)
