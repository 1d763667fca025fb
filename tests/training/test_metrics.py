import numpy as np
import pytest

import training.metrics
from bench.eval_memory import aupro_exact
from training.calibrate import f1_optimal
from training.metrics import aupro, auroc, best_recall_at_far, pixel_auroc, roc_curve


def test_auroc_matches_sklearn_with_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # rounding makes many ties
    assert auroc(y, s) == pytest.approx(sklearn.roc_auc_score(y, s), abs=1e-12)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5


def test_roc_curve_end_points():
    fpr, tpr = roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.3]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_best_recall_at_far_hand_built_and_against_every_threshold():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.25, 0.5, 0.8, 0.95])
    assert best_recall_at_far(y, s, 0.0) == 0.25  # only above the good 0.9: one defect of four
    assert best_recall_at_far(y, s, 0.25) == 0.75  # one good image may be flagged: cut above 0.3
    assert best_recall_at_far(y, s, 1.0) == 1.0
    tied = np.array([0.5, 0.5, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5])  # a tie at the cut cannot be split
    assert best_recall_at_far(y, tied, 0.25) == 0.0
    rng = np.random.default_rng(0)  # brute force: the best recall over every cut whose false-alarm rate fits
    y = rng.integers(0, 2, 300).astype(bool)
    s = np.round(rng.normal(y * 1.5, 1.0), 1)
    for far in (0.0, 0.01, 0.05, 0.2):
        cuts = np.r_[-np.inf, np.unique(s)]
        best = max((s[y] > t).mean() for t in cuts if (s[~y] > t).mean() <= far)
        assert best_recall_at_far(y, s, far) == pytest.approx(best)
    with pytest.raises(ValueError):
        best_recall_at_far(np.ones(3), np.arange(3.0), 0.1)


def test_aupro_hand_built_cases():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:4, 2:4] = 1  # region A, 4 px
    mask[7:9, 6:9] = 1  # region B, 6 px
    perfect = mask.astype(float)
    assert aupro([mask], [perfect]) == pytest.approx(1.0, abs=0.01)
    # region A found perfectly, region B scored like background: PRO = 0.5 everywhere
    half = np.zeros((10, 10))
    half[2:4, 2:4] = 1.0
    assert aupro([mask], [half]) == pytest.approx(0.5, abs=0.02)
    # a random map gives PRO ~= FPR, so the normalised area up to 0.3 is ~0.15
    rng = np.random.default_rng(0)
    masks = [np.pad(np.ones((20, 20), np.uint8), 40) for _ in range(20)]
    maps = [rng.random(m.shape) for m in masks]
    assert aupro(masks, maps) == pytest.approx(0.15, abs=0.02)


def _blobby(seed: int, n: int = 12, size: int = 48) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks with a few defect blobs and maps that score them higher, with ties (rounded) and noise."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        for _ in range(i % 3):  # some maps carry no defect
            y, x = rng.integers(4, size - 8, 2)
            m[y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = 1
        masks.append(m)
        maps.append(np.round(rng.normal(m * 1.2, 1.0), 2).astype(np.float32))
    return masks, maps


def test_pixel_auroc_is_within_its_bound_of_the_exact_one(monkeypatch):
    masks, maps = _blobby(0)
    exact = auroc(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
    got = pixel_auroc(masks, maps)
    assert 0.7 < exact < 0.95 and abs(got.value - exact) <= got.max_error < 2e-3
    # bins placed from a sample of 3,000 of the 27,648 pixels: coarser bins, the counts still exact, the bound holds
    monkeypatch.setattr(training.metrics, "PIXEL_SAMPLE", 3_000)
    sampled = pixel_auroc(masks, maps)
    assert abs(sampled.value - exact) <= sampled.max_error < 5e-3
    assert pixel_auroc(masks, maps, bins=4).max_error > sampled.max_error  # fewer bins, a looser bound
    with pytest.raises(ValueError, match="both"):
        pixel_auroc([np.zeros_like(m) for m in masks], maps)


def test_aupro_map_by_map_equals_the_recipe_on_every_pixel_and_samples_its_thresholds(monkeypatch):
    masks, maps = _blobby(1)
    exact = aupro_exact(masks, maps)
    assert aupro(masks, maps) == pytest.approx(exact, abs=1e-12)  # every pixel fits the sample: same thresholds
    monkeypatch.setattr(training.metrics, "PIXEL_SAMPLE", 3_000)  # thresholds from a sample, counts exact
    assert aupro(masks, maps) == pytest.approx(exact, abs=0.01)


def test_f1_optimal_threshold():
    good = np.array([0.1, 0.2, 0.3])
    bad = np.array([0.25, 0.8, 0.9])
    r = f1_optimal(good, bad)
    # cutting below 0.25 flags 4 images (3 defects): P = 3/4, R = 1, F1 = 6/7 beats the
    # cut below 0.8 (P = 1, R = 2/3, F1 = 0.8)
    assert r["threshold"] == pytest.approx(0.225) and r["precision"] == 0.75 and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(6 / 7)
