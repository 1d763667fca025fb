"""The scoring choice from good images: raw error on generated parts in free pose (where in-sample statistics
mislead), a position-aware score on generated fixed-pose parts whose texture depends on position."""

import dataclasses

import numpy as np
import pytest

from models.config import ModelConfig
from models.imageio import list_images
from models.synthetic import write_dataset
from tests.conftest import FAST_FIT
from training.calibrate import CalibrationConfig, split_images
from training.defects import pose_jitter
from training.fit import fit_detector
from training.select import POSE_JITTER, paired_auroc, select_normalization


def _fitted(root, part, select_count=30):
    data = write_dataset(root, n_train=110, n_test_good=0, n_test_bad=0, seed=7, part=part)
    split = split_images(list_images(data / "train" / "good"), CalibrationConfig(select_count=select_count,
                                                                                  min_count=12, fraction=0.1))
    # as the pipeline's fit that chooses the scoring: no moved copies (training/pipeline.py)
    return split, fit_detector(split.fit, ModelConfig(), dataclasses.replace(FAST_FIT, augment=0), "cpu")


@pytest.fixture(scope="module")
def free_pose(tmp_path_factory):
    return _fitted(tmp_path_factory.mktemp("free"), "free_pose")


def test_free_pose_choice_is_made_on_held_out_images_and_keeps_the_simple_score(free_pose):
    split, det = free_pose
    held_choice, held = select_normalization(det, split.select, seed=0)
    _, in_sample = select_normalization(det, split.fit[: len(split.select)], seed=0)
    lead = {name: t["auroc_on_synthetic_defects"]["position"] - t["auroc_on_synthetic_defects"]["none"]
            for name, t in (("in_sample", in_sample), ("held_out", held))}
    print("position's lead over none on synthetic defects:", lead, "bounds:", held["lead_lower_bound_95"])
    # per-position statistics fitted on the fit images flatter position when scored on those same images
    assert lead["in_sample"] > lead["held_out"]
    # held out, no candidate's lead is significant on a free-pose part: the simple score stays
    assert held_choice == "none" and all(b <= 0 for b in held["lead_lower_bound_95"].values())
    assert held["pose_jitter"] == POSE_JITTER == 0.02  # every held-out image also counted as good once moved


def test_fixed_pose_part_with_position_dependent_texture_gets_a_position_aware_score(tmp_path):
    split, det = _fitted(tmp_path, "marked", select_count=48)
    choice, table = select_normalization(det, split.select, seed=0)
    print("marked part:", table["auroc_on_synthetic_defects"], "bounds:", table["lead_lower_bound_95"])
    assert choice != "none" and table["lead_lower_bound_95"][choice] > 0


def test_a_significant_lead_is_taken():
    """The rule itself: a candidate that clearly separates wins; an equal one does not."""
    rng = np.random.default_rng(0)
    good = rng.normal(0, 1, 40)
    assert paired_auroc(good, good[:, None] + 5) == 1.0
    assert 0.4 < paired_auroc(good, rng.normal(0, 1, (40, 2))) < 0.6
    # good versions (n, g): a moved copy scored like a defect halves the separation the still image had
    assert paired_auroc(np.c_[good, good + 5], good[:, None] + 5) < 0.8


def test_pose_jitter_moves_the_picture_by_the_given_share_of_its_long_side():
    img = np.random.default_rng(0).random((60, 100, 3)).astype(np.float32)
    for seed in range(8):
        out = pose_jitter(np.random.default_rng(seed), img, 0.05)  # r = 5 px
        assert out.shape == (50, 90, 3)
        shifts = [(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6)
                  if np.array_equal(out, img[5 + dy : 55 + dy, 5 + dx : 95 + dx])]
        assert len(shifts) == 1 and 4 <= np.hypot(*shifts[0]) <= 6  # moved by r in some direction
    with pytest.raises(ValueError, match="too small"):
        pose_jitter(np.random.default_rng(0), img[:3], 0.5)
