"""Position normalisation of the patch error: pure functions and the detector path."""

import dataclasses

import numpy as np
import pytest
import torch

from models.scoring import fit_position_stats, latent_novelty, latent_rarity, normalize_positions


def _grid_samples(n_img: int, cells: int, offset: torch.Tensor, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n_img, cells, cells, generator=g) + offset  # (N, h, w), in-cell std 0.29
    rc = torch.stack(torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij"), -1)
    return base, base.flatten(), rc.reshape(-1, 2).repeat(n_img, 1)


def test_a_constant_per_position_offset_vanishes():
    cells = 6
    offset = torch.zeros(cells, cells)
    offset[0, :] = 5.0  # a border that good parts always "get wrong" by the same amount
    offset[:, -1] = 3.0
    maps, values, rc = _grid_samples(200, cells, offset)
    mean, std = fit_position_stats(values, rc, cells)
    z = normalize_positions(maps, mean, std)
    assert z.mean(0).abs().max() < 1e-4  # the offset is gone at every position
    assert (z.std(0) - 1).abs().max() < 0.05
    new, _, _ = _grid_samples(1, cells, offset, seed=1)
    new[0, 3, 2] += 2.0  # a real defect in the middle, smaller than the border offset
    zn = normalize_positions(new, mean, std)
    assert zn[0].flatten().argmax() == 3 * cells + 2  # raw error would point at the border


def test_rare_positions_fall_back_to_global_and_std_is_floored():
    values = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0])
    rc = torch.tensor([[0, 0]] * 8 + [[1, 1]] * 2)
    mean, std = fit_position_stats(values, rc, 2, min_count=8)
    assert mean[0, 0] == 1.0 and mean[1, 1] == pytest.approx(values.mean().item())  # 2 samples: global
    assert std[0, 0] == pytest.approx(0.05 * values.std().item())  # constant cell: floor, not 0


def test_latent_rarity_and_novelty_flag_atoms_never_used_at_a_position():
    # 2 positions, 3 latents: at position 0 good patches use latent 0, at position 1 latent 1; latent 2 never
    counts = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0]])
    rarity = latent_rarity(counts, torch.tensor([100, 100]))
    assert rarity[0, 0] < rarity[0, 1] < rarity[0, 2] and rarity[1, 1] < rarity[1, 0] < rarity[1, 2]
    z = torch.zeros(1, 1, 2, 3)
    z[0, 0, 0, 0] = z[0, 0, 1, 1] = 2.0  # each position uses its usual atom
    def novelty(codes: torch.Tensor) -> torch.Tensor:  # the one active latent of each patch
        return latent_novelty(*codes.topk(1, dim=-1), rarity.view(1, 2, 3))

    usual = novelty(z)
    swapped = novelty(z.flip(2))  # the same atoms, each at the other position: a misplaced part
    assert (swapped > usual).all()
    z_new = torch.zeros(1, 1, 2, 3)
    z_new[..., 2] = 1.0  # an atom no good patch ever used
    assert (novelty(z_new) > swapped).all()


def test_synthetic_defects_change_only_their_mask():
    from training.defects import SYNTHETIC_KINDS, synthetic_defect

    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).uniform(0.3, 0.7, (120, 200, 3)).astype(np.float32)
    for kind in SYNTHETIC_KINDS:
        out, mask = synthetic_defect(rng, img, kind)
        assert out.shape == img.shape and out.dtype == np.float32 and mask.any(), kind
        changed = np.abs(out - img).max(-1) > 1e-6
        assert changed.any(), kind
        import cv2

        near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # blob edges are soft
        assert not (changed & ~near).any(), kind


@pytest.mark.parametrize("normalize", ["position", "position_novelty"])
def test_position_scoring_ranks_defects_above_good_parts_and_keeps_the_conformal_rate(detector, dataset, tmp_path,
                                                                                       normalize):
    """Each new score on generated parts: defects above good parts, and the conformal false-alarm
    rate holds on fresh good parts."""
    import cv2

    from models.imageio import list_images
    from models.synthetic import good_part
    from training.calibrate import CalibrationConfig, calibrate
    from training.metrics import auroc

    scoring = dataclasses.replace(detector.config.scoring, normalize=normalize)
    det = detector.replace(config=dataclasses.replace(detector.config, scoring=scoring))
    rng = np.random.default_rng(5)
    for i in range(179):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), good_part(rng))
    fresh = list_images(tmp_path)
    det = det.replace(calibration=calibrate(det, fresh[:59], CalibrationConfig(alpha=0.1)))
    scores = np.array([r.score for r in det.inspect([det.read(p) for p in fresh[59:]])])
    rate = float((scores > det.calibration.threshold).mean())
    print(f"{normalize}: false-alarm rate on 120 new good parts at alpha=0.1: {rate:.3f}")
    assert rate <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 120)
    good = [det.read(p) for p in list_images(dataset / "test" / "good")]
    bad = [det.read(p) for p in list_images(dataset / "test") if p.parent.name != "good"]
    s = np.array([r.score for r in det.inspect(good + bad)])
    value = auroc(np.r_[np.zeros(len(good)), np.ones(len(bad))], s)
    print(f"{normalize}: image AUROC on generated parts {value:.3f}")
    assert value >= 0.85


def test_unresolved_scoring_cannot_score(detector):
    scoring = dataclasses.replace(detector.config.scoring, normalize="auto")
    det = detector.replace(config=dataclasses.replace(detector.config, scoring=scoring))
    with pytest.raises(RuntimeError, match="not resolved"):
        det.canvas_maps(np.zeros((1, 256, 256, 3), np.float32))


def test_a_config_missing_a_field_is_refused_never_guessed():
    from models.config import ModelConfig

    d = ModelConfig().to_dict()
    del d["scoring"]["normalize"]
    with pytest.raises(ValueError, match=r"missing: \['normalize'\]"):
        ModelConfig.from_dict(d)


def test_position_stats_with_one_sample_or_no_variation_are_finite():
    one = fit_position_stats(torch.tensor([2.0]), torch.tensor([[0, 0]]), 2, min_count=1)
    flat = fit_position_stats(torch.full((50,), 3.0), torch.zeros(50, 2, dtype=torch.long), 2)
    for mean, std in (one, flat):
        assert torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()
    # a cell where good parts never vary is floored relative to the global spread, not at 1e-12
    values = torch.cat([torch.full((20,), 5.0), torch.randn(200, generator=torch.Generator().manual_seed(0))])
    cells = torch.cat([torch.zeros(20, 2), torch.ones(200, 2)]).long()
    _, std = fit_position_stats(values, cells, 2)
    assert float(std[0, 0]) >= 0.05 * float(values.std()) * 0.999


def test_on_part_placement_puts_defects_on_the_part_not_the_backdrop():
    """A part on the right half of a flat backdrop: 'on_part' centres its defects on the part, 'uniform'
    anywhere; an unknown placement is refused."""
    from training.defects import SYNTHETIC_KINDS, synthetic_defect

    img = np.full((120, 240, 3), 0.1, np.float32)
    img[:, 120:] = np.random.default_rng(1).uniform(0.3, 0.9, (120, 120, 3))
    share = {}
    for placement in ("uniform", "on_part"):
        rng = np.random.default_rng(0)
        masks = [synthetic_defect(rng, img, SYNTHETIC_KINDS[i % 3], placement)[1] for i in range(60)]
        share[placement] = np.mean([m[:, 120:].sum() / m.sum() for m in masks])
    assert share["on_part"] > 0.9 and share["uniform"] < 0.75, share
    with pytest.raises(ValueError, match="placement"):
        synthetic_defect(np.random.default_rng(0), img, "blob", "middle")
