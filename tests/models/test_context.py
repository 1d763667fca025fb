"""Learned context (`scoring.context`): each patch feature is followed by its neighbourhood mean."""

import numpy as np
import pytest
import torch

from models.config import ModelConfig, ScoringConfig
from models.detector import Detector
from models.features import patch_features
from models.imageio import list_images
from models.preprocess import make_canvases
from training.calibrate import CalibrationConfig
from training.fit import FitConfig
from training.pipeline import fit_calibrated


def test_context_appends_the_neighbourhood_mean_to_each_patch():
    torch.manual_seed(0)
    maps = [torch.randn(2, 4, 12, 12), torch.randn(2, 6, 6, 6)]
    plain = patch_features(maps, 3)
    with_context = patch_features(maps, 3, context=5)
    assert with_context.shape == (2, 20, 12, 12)
    assert torch.equal(with_context[:, :10], plain)
    # an interior cell: the plain mean of the 5 x 5 cells around it; a corner cell: of the 3 x 3 inside the grid
    assert torch.allclose(with_context[:, 10:, 6, 6], plain[:, :, 4:9, 4:9].mean((-2, -1)), atol=1e-6)
    assert torch.allclose(with_context[:, 10:, 0, 0], plain[:, :, :3, :3].mean((-2, -1)), atol=1e-6)
    # a change at one cell reaches the context of its neighbours, not of cells 3 away
    bumped = [m.clone() for m in maps]
    bumped[0][:, :, 6, 6] += 10
    diff = (patch_features(bumped, 1, context=5) - patch_features(maps, 1, context=5)).abs().sum((0, 1))
    assert diff[6, 8] > 0 and diff[6, 9] == 0


@pytest.mark.parametrize("bad", [1, 2, 4, -3])
def test_context_must_be_zero_or_an_odd_window(bad):
    with pytest.raises(ValueError, match="context"):
        ScoringConfig(context=bad)


def test_a_context_model_fits_saves_and_rebuilds_itself(dataset, detector, tmp_path):
    config = ModelConfig(scoring=ScoringConfig(context=5))
    det = fit_calibrated(list_images(dataset / "train" / "good"), config, FitConfig(steps=60, batch_size=512,
                         max_patches=20_000), CalibrationConfig(alpha=0.1, fraction=0.25, min_count=12), "cpu")
    plain = patch_features(detector.backbone(torch.zeros(1, 3, 64, 64)), 3)  # one patch's own feature
    assert det.sae.d_in == 2 * plain.shape[1]  # the SAE rebuilds patch and neighbourhood together
    images = [det.read(p) for p in list_images(dataset / "test")[:3]]
    det.save(tmp_path / "ctx.safetensors")
    loaded = Detector.from_artifact(tmp_path / "ctx.safetensors", "cpu")
    assert loaded.config.scoring.context == 5
    assert [r.score for r in loaded.inspect(images)] == [r.score for r in det.inspect(images)]


def test_error_patch_needs_context():
    with pytest.raises(ValueError, match="error"):
        ScoringConfig(context=0, error="patch")
    with pytest.raises(ValueError, match="error"):
        ScoringConfig(error="centre")


def test_error_patch_scores_the_patch_half_only(dataset, tmp_path):
    """error 'patch': a patch's error is over its own features, not the neighbourhood mean the SAE also rebuilds;
    the fit's position statistics are of that error, and the artifact rebuilds itself with it."""
    config = ModelConfig(scoring=ScoringConfig(context=5, error="patch", normalize="none"))
    det = fit_calibrated(list_images(dataset / "train" / "good"), config, FitConfig(steps=60, batch_size=512,
                         max_patches=20_000), CalibrationConfig(alpha=0.1, fraction=0.25, min_count=12), "cpu")
    images = [det.read(p) for p in list_images(dataset / "test")[:2]]
    canvases = np.concatenate([make_canvases(img, det.config.preprocess)[0] for img in images])
    with torch.inference_mode():
        f = det.features(canvases)
        values, indices = det.sae.encode_topk(f.flatten(0, 2))
        rebuilt = det.sae.decode_topk(values, indices).view_as(f)
    half = f.shape[-1] // 2
    err = det.canvas_pass(canvases).err
    torch.testing.assert_close(err, (f[..., :half] - rebuilt[..., :half]).pow(2).mean(-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(err, (f - rebuilt).pow(2).mean(-1), atol=1e-3)
    det.save(tmp_path / "patch.safetensors")
    loaded = Detector.from_artifact(tmp_path / "patch.safetensors", "cpu")
    assert loaded.config.scoring.error == "patch"
    assert [r.score for r in loaded.inspect(images)] == [r.score for r in det.inspect(images)]
