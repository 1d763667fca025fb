import math

import numpy as np
import pytest
import torch

from models.decision import (
    UnsupportedAlpha,
    conformal_p_value,
    conformal_rank,
    conformal_threshold,
    false_alarm_bound,
    false_alarm_tail,
    find_regions,
    image_score,
)
from models.scoring import anomaly_maps


def test_conformal_rank_and_threshold_hand_computed():
    s = np.arange(1, 100, dtype=float)  # 99 scores 1..99
    assert conformal_rank(99, 0.01) == 99  # ceil(100 * 0.99)
    assert conformal_threshold(s, 0.01) == 99.0
    assert conformal_rank(99, 0.1) == 90  # ceil(100 * 0.9)
    assert conformal_threshold(s, 0.1) == 90.0
    assert conformal_rank(19, 0.05) == 19
    with pytest.raises(UnsupportedAlpha, match=r"1/\(n\+1\) = 0.0909091 with n = 10"):
        conformal_threshold(np.arange(10.0), 0.01)  # n too small for alpha: refused, never +inf
    assert conformal_threshold(np.arange(10.0), 1 / 11) == 9.0  # exactly 1/(n+1): the largest score
    assert conformal_rank(30, 1 / 31) == 30


def test_conformal_p_value_hand_computed():
    s = np.array([1.0, 2.0, 3.0, 4.0])
    assert conformal_p_value(10.0, s) == pytest.approx(1 / 5)
    assert conformal_p_value(3.0, s) == pytest.approx(3 / 5)  # 3 and 4 are >= 3
    assert conformal_p_value(0.0, s) == pytest.approx(1.0)


def test_false_alarm_rate_of_conformal_threshold_is_at_most_alpha():
    rng = np.random.default_rng(0)
    alpha, n, trials = 0.05, 99, 4000
    cal = np.sort(rng.gamma(2.0, size=(trials, n)), axis=1)
    rank = conformal_rank(n, alpha)
    new = rng.gamma(2.0, size=trials)
    rate = float((new > cal[:, rank - 1]).mean())
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert rate >= alpha - 0.02  # and not wastefully conservative (exact value is 0.05 here)


def test_false_alarm_tail_is_the_exact_law_of_false_alarms_among_new_good_images():
    rng = np.random.default_rng(1)
    n, m, alpha, trials = 48, 25, 1 / 49, 20_000  # tire's sizes: the threshold is the largest calibration score
    cal = rng.normal(size=(trials, n))
    new = rng.normal(size=(trials, m))
    counts = (new > np.sort(cal, axis=1)[:, conformal_rank(n, alpha) - 1][:, None]).sum(1)
    for k in (1, 2, 3, 5):
        seen = float((counts >= k).mean())
        tail = false_alarm_tail(k, m, n, alpha)
        assert abs(seen - tail) <= 4 * math.sqrt(tail * (1 - tail) / trials) + 1e-4, (k, seen, tail)
    assert false_alarm_tail(1, 25, 48, 1 / 49) == pytest.approx(1 - 48 / 73)  # P(none) = B(1, 73) / B(1, 48)
    assert false_alarm_tail(0, 25, 48, 1 / 49) == 1.0
    # heavier-tailed than a binomial at alpha: the threshold's own draw varies
    assert false_alarm_tail(10, 250, 152, 0.01) > 1e-3
    with pytest.raises(UnsupportedAlpha):
        false_alarm_tail(1, 25, 48, 0.01)
    with pytest.raises(ValueError):
        false_alarm_tail(26, 25, 48, 0.5)


def test_false_alarm_bound_is_the_quantile_of_one_models_own_false_alarm_rate():
    rng = np.random.default_rng(2)
    trials = 20_000
    for n, alpha in ((35, 1 / 36), (104, 0.01), (300, 0.05)):  # the largest score; an inner rank; a larger alpha
        # one calibration draw -> one threshold -> that model's own false-alarm rate on exchangeable good images
        own_rate = 1 - np.sort(rng.random((trials, n)), axis=1)[:, conformal_rank(n, alpha) - 1]
        bound = false_alarm_bound(n, alpha, 0.9)
        assert abs(float((own_rate <= bound).mean()) - 0.9) <= 4 * math.sqrt(0.09 / trials), (n, alpha)
        assert bound > alpha >= own_rate.mean() - 4 * own_rate.std() / math.sqrt(trials)  # alpha: only the average
    assert false_alarm_bound(35, 1 / 36, 0.9) == pytest.approx(1 - 0.1 ** (1 / 35))  # max of n: closed form
    # more calibration images, a tighter rate at the same alpha (not strictly: the rank's rounding leaves slack)
    assert false_alarm_bound(1000, 0.01) < false_alarm_bound(300, 0.01) < false_alarm_bound(99, 0.01)
    with pytest.raises(UnsupportedAlpha):
        false_alarm_bound(35, 0.01)
    with pytest.raises(ValueError, match="confidence"):
        false_alarm_bound(35, 1 / 36, 1.0)


def test_image_score_max_and_top_mean():
    m = np.zeros((10, 10), np.float32)
    m[0, :5] = [5, 4, 3, 2, 1]
    assert image_score(m, "max") == 5
    assert image_score(m, "top_mean", 0.02) == pytest.approx(4.5)


def test_anomaly_maps_upsample_and_smooth_keep_peak_location():
    err = torch.zeros(1, 8, 8)
    err[0, 2, 5] = 1
    maps = anomaly_maps(err, 64, sigma=2)
    assert maps.shape == (1, 64, 64)
    y, x = np.unravel_index(int(maps[0].argmax()), (64, 64))
    assert abs(y - 20) <= 4 and abs(x - 44) <= 4


def test_regions_boxes_in_original_pixels():
    m = np.zeros((20, 40), np.float32)
    m[2:5, 3:9] = 2.0
    m[10:12, 30:31] = 3.0
    regions = find_regions(m, 1.0, (2.0, 2.0))
    assert len(regions) == 2
    big = regions[0]
    assert (big.x, big.y, big.width, big.height, big.area, big.peak) == (6, 4, 12, 6, 72, 2.0)


@pytest.mark.parametrize("size, cells, sigma", [(256, 32, 4.0), (64, 8, 2.0), (128, 16, 0.0), (96, 12, 3.3)])
def test_map_operator_equals_upsampling_then_2d_gaussian(size, cells, sigma):
    """The cheap path (two small matrix products on the feature grid) equals the definition
    (bilinear upsampling, then a 2-D Gaussian with reflected borders) to float precision."""
    from models.scoring import reference_maps

    err = torch.rand(3, cells, cells, generator=torch.Generator().manual_seed(1)) * 5
    np.testing.assert_allclose(anomaly_maps(err, size, sigma).numpy(), reference_maps(err, size, sigma).numpy(),
                               atol=2e-5, rtol=1e-5)


def test_standardization_floor_is_relative_and_never_nan():
    from models.features import fit_standardization

    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 2.0
    x[:, 3] = 7.0 + 1e-9 * torch.arange(500)  # near-constant on good parts
    mean, std = fit_standardization(x)
    assert float(std[3]) >= 0.01 * float(std.median()) * 0.999  # cannot blow a tiny change up
    assert torch.allclose(std[:3], x[:, :3].double().std(0).float())
    m1, s1 = fit_standardization(x[:1])
    assert torch.isfinite(m1).all() and torch.isfinite(s1).all() and (s1 > 0).all()


def test_score_scale_and_display_map_handle_zero_and_negative_thresholds():
    from models.decision import normalized_map, score_scale

    s = np.array([-1.0, 0.0, 2.0])
    assert score_scale(0.0, s) == 3.0 and score_scale(-0.5, s) == 3.0 and score_scale(5.0, s) == 5.0
    m = np.array([[0.0, 1.0, 2.0]])
    np.testing.assert_allclose(normalized_map(m, 1.0), m / 2)  # the old formula for a positive threshold
    for t in (0.0, -1.0):
        out = normalized_map(m, t)
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
