"""Repair training: an SAE taught to map corrupted features back to clean ones rebuilds a synthetic
defect worse than one taught to copy, and good patches about as well."""

import dataclasses

import numpy as np
import pytest
import torch

from models.config import ModelConfig
from models.features import extract_features, standardize
from models.geometry import FeatureGrid
from models.imageio import list_images, read_image
from models.preprocess import make_canvases, valid_cells
from models.sae import patch_error
from models.synthetic import write_dataset
from tests.conftest import FAST_FIT
from training.fit import FitConfig, corrupt_batch, defect_copy, fit_detector


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    data = write_dataset(tmp_path_factory.mktemp("repair"), n_train=56, n_test_good=0, n_test_bad=0, seed=3)
    paths = list_images(data / "train" / "good")
    return paths[:44], paths[44:]


def _errors(det, paths, seed=5):
    """Patch errors of held-out good cells and of the cells under a synthetic defect."""
    cfg, grid, rng = det.config, FeatureGrid.of(det.config), np.random.default_rng(seed)
    good, bad = [], []
    for i, p in enumerate(paths):
        img = read_image(p, cfg.preprocess)
        clean, layout = make_canvases(img, cfg.preprocess)
        corrupted, cells = defect_copy(rng, img, cfg.preprocess, grid, 2 * i)
        valid = valid_cells(layout, grid)
        feats = extract_features(det.backbone, np.concatenate([clean, corrupted]), cfg.backbone.mean,
                                 cfg.backbone.std, cfg.scoring.pool, "cpu", cfg.scoring.context).float()
        x = standardize(feats, det.feat_mean, det.feat_std)
        err = patch_error(x, det.sae(x).x_hat)
        good.append(err[: len(clean)][torch.from_numpy(valid & ~cells)])
        bad.append(err[len(clean):][torch.from_numpy(valid & cells)])
    return float(torch.cat(good).mean()), float(torch.cat(bad).mean())


def test_repair_trained_sae_rebuilds_defects_worse_and_good_patches_as_well(parts):
    fit, held = parts
    copy = fit_detector(fit, ModelConfig(), FAST_FIT, "cpu")
    repair = fit_detector(fit, ModelConfig(), dataclasses.replace(FAST_FIT, repair=0.5), "cpu")
    assert copy.meta["n_repair_pairs"] == 0 and repair.meta["n_repair_pairs"] > 50
    (cg, cb), (rg, rb) = _errors(copy, held), _errors(repair, held)
    print(f"copy: good {cg:.3f} defect {cb:.3f}; repair: good {rg:.3f} defect {rb:.3f}")
    assert rb > cb  # the defect is not copied through
    assert rb / rg > cb / cg  # and stands out more against good patches
    assert rg < 1.5 * cg  # good patches are still rebuilt


def test_corrupt_batch_keeps_targets_clean_and_corrupts_the_stated_share():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8)
    pairs = torch.stack([torch.full((10, 8), 9.0), torch.zeros(10, 8)], 1)
    inp, target = corrupt_batch(x, pairs, FitConfig(repair=0.4, repair_noise=0.5), g)
    changed = (inp != x).any(1)
    assert int(changed.sum()) == 40 and not changed[40:].any()
    assert torch.equal(target[:20], x[:20]) and torch.equal(target[20:40], torch.zeros(20, 8))
    assert torch.equal(inp[20:40], torch.full((20, 8), 9.0))
    same = corrupt_batch(x, None, FitConfig(), g)
    assert same[0] is x and same[1] is x
    with pytest.raises(ValueError, match="repair"):
        FitConfig(repair=1.0)


def test_moved_copies_train_the_sae_not_the_atlas_or_the_position_statistics_and_only_on_few_images(parts, monkeypatch):
    import training.atlas
    import training.fit

    fit = parts[0][:6]
    seen = {}
    for module, name in ((training.atlas, "build_atlas"), (training.fit, "fit_score_stats")):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name):
            seen[_name] = next(a for a in args if isinstance(a, np.ndarray))  # the patches' tags
            return _real(*args)

        monkeypatch.setattr(module, name, spy)
    room = dataclasses.replace(FAST_FIT, max_patches=100_000)  # every patch of the six images and their copies
    plain = fit_detector(fit, ModelConfig(), dataclasses.replace(room, augment=0), "cpu")
    many = fit_detector(fit, ModelConfig(), dataclasses.replace(room, augment_below=len(fit)), "cpu")
    det = fit_detector(fit, ModelConfig(), dataclasses.replace(room, augment=1), "cpu")  # spied on last
    assert many.meta["n_moved_patches"] == 0 and many.meta["n_patches"] == plain.meta["n_patches"]  # enough images
    own = det.meta["n_patches"] - det.meta["n_moved_patches"]
    assert det.meta["n_moved_patches"] > 0.5 * own and own == plain.meta["n_patches"]  # the SAE saw both
    for tags in seen.values():  # the atlas and the statistics saw the images' own patches only
        assert len(tags) == plain.meta["n_patches"] and (tags[:, 1] >= 0).all()
    assert not torch.equal(det.sae.W_dec, plain.sae.W_dec)
    for bad in ({"augment": -1}, {"augment_below": -1}):
        with pytest.raises(ValueError, match="augment"):
            FitConfig(**bad)
    c = FitConfig()
    assert c.augment > 0 and [c.copies(n) for n in (1, c.augment_below - 1, c.augment_below)] == [c.augment] * 2 + [0]
