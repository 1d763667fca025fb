import numpy as np
import pytest

from models.decision import UnsupportedAlpha
from models.imageio import list_images
from models.synthetic import good_part
from training.calibrate import CalibrationConfig, calibrate, split_images
from training.fit import Reservoir


def test_reservoir_is_bounded_and_uniform():
    r = Reservoir(capacity=1000, dim=1, seed=0)
    for start in range(0, 100_000, 777):
        r.add(np.arange(start, min(start + 777, 100_000), dtype=np.float32)[:, None])
    sample = r.sample()[0][:, 0]
    assert len(sample) == 1000 and r.seen == 100_000 and len(np.unique(sample)) == 1000
    assert 40_000 < sample.mean() < 60_000  # uniform over the whole stream, not its start


def test_split_is_seeded_disjoint_and_respects_minimum(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(100)]
    cfg = CalibrationConfig(fraction=0.2, min_count=30, seed=3, select_count=12, groups="none")
    fit, sel, cal, n_groups, cal_parts = split_images(paths, cfg)
    assert (len(cal), len(sel), len(fit), n_groups, cal_parts) == (30, 12, 58, 100, 30)
    assert not set(fit) & set(cal) and not set(fit) & set(sel) and not set(sel) & set(cal)
    assert split_images(paths, cfg) == (fit, sel, cal, n_groups, cal_parts)
    with pytest.raises(ValueError, match="at least 2"):
        split_images(paths[:1], CalibrationConfig())


def test_split_keeps_each_part_in_one_split(tmp_path):
    """Several shots of one physical part never straddle fit and calibration (the calibration must
    cover new parts): by file-name pattern, by folder, or by a group file."""
    paths = [tmp_path / f"part{p:02d}_shot{s}.png" for p in range(40) for s in range(5)]
    split = split_images(paths, CalibrationConfig(groups=r"pattern:^part\d+", select_count=20, seed=1))
    part = {name: {q.name.split("_")[0] for q in getattr(split, name)} for name in ("fit", "select", "calibrate")}
    assert split.n_groups == 40 and not part["fit"] & part["calibrate"] and not part["select"] & part["calibrate"]
    assert not part["fit"] & part["select"] and len(split.calibrate) % 5 == 0 and len(split.calibrate) >= 40
    assert split.calibration_parts == len(part["calibrate"]) == len(split.calibrate) // 5  # parts, not images
    nested = [tmp_path / f"p{p}" / f"{s}.png" for p in range(10) for s in range(4)]
    folder = split_images(nested, CalibrationConfig(groups="folder", select_count=0))
    assert not {q.parent for q in folder.fit} & {q.parent for q in folder.calibrate}
    table = tmp_path / "groups.csv"
    table.write_text("".join(f"{q.name},{q.name[:6]}\n" for q in paths))
    by_file = split_images(paths, CalibrationConfig(groups=f"file:{table}", select_count=20, seed=1))
    assert by_file == split
    with pytest.raises(ValueError, match="matches no part"):
        split_images(paths, CalibrationConfig(groups="pattern:^zzz"))
    with pytest.raises(ValueError, match="1 part"):
        split_images(paths, CalibrationConfig(groups="pattern:^p"))
    with pytest.raises(ValueError, match="groups must be"):
        CalibrationConfig(groups="camera")


def test_default_split_keeps_runs_of_consecutive_shots_together(tmp_path):
    """The default groups runs of 8 consecutive file names per folder (shots of one part taken one after
    another); a small set gets shorter runs (at most 1/12 of its images) so every split still gets parts."""
    paths = [tmp_path / f"img_{i:03d}.png" for i in range(240)]
    split = split_images(paths, CalibrationConfig(select_count=24))
    run = {name: {int(q.stem[4:]) // 8 for q in getattr(split, name)} for name in ("fit", "select", "calibrate")}
    assert split.n_groups == 30 and len(split.calibrate) == 48 and len(split.select) == 24
    assert split.calibration_parts == len(run["calibrate"]) == 6
    assert not run["fit"] & run["calibrate"] and not run["fit"] & run["select"] and not run["select"] & run["calibrate"]
    small = split_images(paths[:36], CalibrationConfig(select_count=4))
    assert small.n_groups == 12 and small.fit and small.select and small.calibrate
    with pytest.raises(ValueError, match="runs:K"):
        CalibrationConfig(groups="runs:x")


def test_false_alarm_rate_on_generated_good_parts_stays_near_alpha(detector, tmp_path):
    """Calibrate on 59 fresh good parts at alpha=0.1, then count alarms on 120 more."""
    import cv2

    rng = np.random.default_rng(77)
    for i in range(179):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), good_part(rng))
    paths = list_images(tmp_path)
    cal = calibrate(detector, paths[:59], CalibrationConfig(alpha=0.1))
    assert cal.threshold == cal.scores[53]  # rank ceil(60 * 0.9) = 54

    scores = np.array([r.score for r in detector.inspect([detector.read(p) for p in paths[59:]])])
    rate = float((scores > cal.threshold).mean())
    print(f"false-alarm rate on 120 new good parts at alpha=0.1: {rate:.3f}")
    assert rate <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 120) + 0.05  # conformal bound + sampling noise


def test_too_few_calibration_images_warns(detector, dataset, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="training.calibrate"):
        cal = calibrate(detector, list_images(dataset / "test" / "good")[:5], CalibrationConfig(alpha=0.01))
    assert "split-conformal calibration needs at least" in caplog.text
    assert cal.threshold == max(cal.scores)
    # what the model states is what it guarantees: 1/(n+1) with n = 5, never the 0.01 that was asked
    assert cal.alpha == pytest.approx(1 / 6) and cal.requested_alpha == 0.01 and cal.min_alpha == cal.alpha
    with pytest.raises(UnsupportedAlpha, match="1/\\(n\\+1\\) = 0.166667 with n = 5"):
        cal.with_alpha(0.05)
    assert cal.with_alpha(0.5).threshold < cal.threshold
