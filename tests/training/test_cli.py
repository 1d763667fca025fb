import json
import logging
import os

import numpy as np
import pytest

from models.decision import conformal_threshold, false_alarm_tail
from models.detector import Detector
from models.synthetic import write_dataset
from training.calibrate import FEW_CALIBRATION_PARTS, CalibrationConfig
from training.cli import main
from training.fit import FitConfig

FAST = ["--steps", "60", "--max-patches", "20000", "--min-calib", "8", "--device", "cpu", "--no-export"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cli"), n_train=24, n_test_good=6, n_test_bad=6, seed=5)


@pytest.fixture(scope="module")
def fitted(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "m.safetensors"
    (small_data / "train" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["fit", str(small_data), "--out", str(out), *FAST]) == 0
    (small_data / "train" / "good" / "broken.png").unlink()
    return out


def test_fit_writes_a_calibrated_versioned_artifact(fitted, caplog):
    det = Detector.from_artifact(fitted, "cpu")
    cal = det.calibration
    assert cal.requested_alpha == CalibrationConfig.alpha  # CLI defaults are the dataclass defaults
    # 7-8 calibration images cannot support alpha=0.01: the card states the alpha it guarantees, 1/(n+1),
    # and the threshold is the largest calibration score
    n = len(cal.scores)
    assert n in (7, 8) and cal.alpha == pytest.approx(1 / (n + 1)) and cal.threshold == cal.scores[-1]
    assert cal.threshold == conformal_threshold(np.asarray(cal.scores), cal.alpha)
    assert det.calibration is not None and len(det.calibration.scores) == det.meta["n_calibration_images"]
    # 25 files, the unreadable one skipped wherever it landed: calibration held out, and the scoring-selection
    # images, once they chose, fit the SAE again with the fit split (fewer than refit_below fit images)
    assert det.meta["refit_with_selection"] and det.meta["n_selection_images"] > 0
    assert det.meta["n_fit_images"] + det.meta["n_calibration_images"] == 24
    # that refit, on fewer than augment_below images, trained its SAE on moved copies of them too
    assert det.meta["fit_config"]["augment"] == FitConfig.augment > 0 and det.meta["n_moved_patches"] > 0
    assert det.meta["version"] and det.meta["dataset_fingerprint"] and det.meta["calibration_split"]["seed"] == 0


def test_evaluate_writes_metrics_and_report(fitted, small_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(fitted), str(small_data), "--out", str(out), "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"image_auroc", "pixel_auroc", "aupro_30", "false_alarm_rate", "recall_by_defect", "f1"} <= set(m)
    assert 0 <= m["image_auroc"] <= 1 and m["n_images"] == 12
    # the labels' own best threshold at the card's alpha, and at twice it (never less)
    assert 0 <= m["best_recall_at_alpha"] <= m["best_recall_at_2alpha"] <= 1
    # the false alarms on test/good, and how likely that many are under the guarantee's own assumption
    assert m["false_alarms"] == round(m["false_alarm_rate"] * m["n_good"]) and m["n_good"] >= 1
    cal = Detector.from_artifact(fitted, "cpu").calibration
    assert m["false_alarm_tail_p"] == pytest.approx(
        false_alarm_tail(m["false_alarms"], m["n_good"], len(cal.scores), cal.alpha))
    assert (out / "report.png").stat().st_size > 10_000 and (out / "scores.csv").read_text().count("\n") == 13


def test_fit_writes_a_validated_onnx_export_beside_the_artifact(small_data, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    from models.portable import PortableDetector
    from training.export import TOLERANCE

    out = tmp_path / "m.safetensors"
    args = [a for a in FAST if a != "--no-export"]
    caplog.set_level(logging.INFO)
    assert main(["fit", str(small_data), "--out", str(out), *args]) == 0
    # the fit's own INFO lines, not the exporter's graph rewrites
    assert any(r.name == "sae-inspect" for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir")]
    onnx = tmp_path / "m.onnx"
    assert onnx.exists()
    det, portable = Detector.from_artifact(out, "cpu"), PortableDetector(onnx, companion=out)
    pics = [det.read(p) for p in sorted((small_data / "test" / "scratch").iterdir())]
    for a, b in zip(det.inspect(pics), portable.inspect(pics), strict=True):
        assert abs(a.score - b.score) <= TOLERANCE * abs(det.calibration.threshold) and a.anomalous == b.anomalous
    # a refit with --no-export removes the old export, which would now be stale; the next export matches
    assert main(["fit", str(small_data), "--out", str(out), *FAST]) == 0
    assert not onnx.exists()
    assert main(["fit", str(small_data), "--out", str(out), *args, "--steps", "30"]) == 0
    PortableDetector(onnx, companion=out)


def test_evaluate_accepts_a_feedback_folder(fitted, small_data, tmp_path):
    """The service's feedback folder of one model (good/ and defect/ with JSON side files) is a test set."""
    import shutil

    fb = tmp_path / "feedback" / "parts"
    for kind, src in (("good", "good"), ("defect", "scratch")):
        (fb / kind).mkdir(parents=True)
        for p in (small_data / "test" / src).iterdir():
            shutil.copy(p, fb / kind / p.name)
            (fb / kind / (p.stem + ".json")).write_text("{}")
    out = tmp_path / "eval"
    assert main(["evaluate", str(fitted), str(fb), "--out", str(out), "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    n_bad = len(list((small_data / "test" / "scratch").iterdir()))
    assert m["n_images"] == 6 + n_bad and "pixel_auroc" not in m and 0 <= m["image_auroc"] <= 1


def test_score_reports_per_file(fitted, small_data, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_text("hello")
    img = next((small_data / "test" / "good").iterdir())
    assert main(["score", str(fitted), str(img), str(junk), "--json", "--device", "cpu"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["verdict"] in ("good", "anomalous") and 0 < lines[0]["p_value"] <= 1
    assert "junk.png" in lines[1]["error"]


def test_score_refuses_an_alpha_the_calibration_cannot_support(fitted, small_data, capsys):
    img = next((small_data / "test" / "good").iterdir())
    n = len(Detector.from_artifact(fitted, "cpu").calibration.scores)
    assert main(["score", str(fitted), str(img), "--alpha", "0.01", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "alpha=0.01 is below the smallest false-alarm rate" in err and f"1/(n+1) = {1 / (n + 1):.6g}" in err


def test_retrain_with_init_leaves_old_artifact_untouched(fitted, small_data, tmp_path):
    before = fitted.read_bytes()
    new = tmp_path / "not" / "yet" / "m2.safetensors"  # --out into folders that do not exist yet
    assert main(["fit", str(small_data), "--init", str(fitted), "--out", str(new), *FAST]) == 0
    assert fitted.read_bytes() == before
    old, det = Detector.from_artifact(fitted, "cpu"), Detector.from_artifact(new, "cpu")
    assert det.meta["parent_version"] == old.version != det.version
    # it keeps the parent's canvas and scoring, and the tables that chose them
    assert det.config == old.config and det.meta["canvas_choice"] == old.meta["canvas_choice"]
    assert det.meta["scoring_selection"] == old.meta["scoring_selection"]
    assert main(["fit", str(small_data), "--init", str(fitted), "--out", str(fitted), *FAST]) == 2


@pytest.mark.parametrize("flag", [["--k", "4"], ["--size", "320"], ["--backbone", "resnet18"], ["--stages", "1", "2"],
                                  ["--normalize", "none"]])
def test_init_with_a_model_shaping_flag_is_a_one_line_error(fitted, small_data, tmp_path, capsys, flag):
    out = tmp_path / "m3.safetensors"
    assert main(["fit", str(small_data), "--init", str(fitted), "--out", str(out), *flag, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag[0]} cannot be used with --init" in err[0] and not out.exists()


def test_alpha_sets_the_conformal_threshold(small_data, tmp_path):
    out = tmp_path / "a.safetensors"
    assert main(["fit", str(small_data), "--out", str(out), "--alpha", "0.2", *FAST]) == 0
    cal = Detector.from_artifact(out, "cpu").calibration
    assert cal.alpha == 0.2 and cal.threshold == conformal_threshold(np.asarray(cal.scores), 0.2)


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing", "no such folder"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no images found"),
])
def test_bad_data_folders_are_clear_errors(tmp_path, capsys, setup, message):
    folder = setup(tmp_path)
    assert main(["fit", str(folder), "--out", str(tmp_path / "x.safetensors"), *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and str(folder) in err and "Traceback" not in err


def test_evaluate_on_wrong_layout_is_a_clear_error(fitted, tmp_path, capsys):
    assert main(["evaluate", str(fitted), str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "not an MVTec-layout folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_folder_keeps_previous_artifact(fitted, small_data, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    target = ro / "m.safetensors"
    target.write_bytes(fitted.read_bytes())
    ro.chmod(0o555)
    try:
        assert main(["fit", str(small_data), "--out", str(target), *FAST]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)
    assert target.read_bytes() == fitted.read_bytes()


def test_failed_save_keeps_previous_artifact(fitted, small_data, tmp_path, monkeypatch, capsys):
    target = tmp_path / "m.safetensors"
    target.write_bytes(fitted.read_bytes())

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("models.artifact.os.fsync", disk_full)
    assert main(["fit", str(small_data), "--out", str(target), *FAST]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert target.read_bytes() == fitted.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_fit_with_labelled_defects_reports_f1_threshold_beside_conformal(small_data, tmp_path):
    out = tmp_path / "d.safetensors"
    assert main(["fit", str(small_data), "--out", str(out), "--defects", str(small_data), "--alpha", "0.2",
                 *FAST]) == 0
    det = Detector.from_artifact(out, "cpu")
    report = det.meta["f1_optimal_on_defects"]
    assert {"threshold", "f1", "precision", "recall"} <= set(report)
    cal = det.calibration  # the decision rule stays the conformal threshold, not the F1-optimal one
    assert cal.threshold == conformal_threshold(np.asarray(cal.scores), 0.2)


def test_refit_below_zero_keeps_the_selection_images_out_of_the_sae(fitted, small_data, tmp_path, caplog):
    out = tmp_path / "norefit.safetensors"
    caplog.set_level(logging.WARNING, logger="training")  # other tests' fixtures quiet it
    assert main(["fit", str(small_data), "--out", str(out), "--refit-below", "0", *FAST]) == 0
    det, refit = Detector.from_artifact(out, "cpu"), Detector.from_artifact(fitted, "cpu")
    # 24 images in runs of 2: the calibration's images stand for half as many parts, and the fit says so
    parts = det.meta["n_calibration_parts"]
    assert 2 * parts >= det.meta["n_calibration_images"] >= parts and parts < FEW_CALIBRATION_PARTS
    assert f"only {parts} parts" in caplog.text
    assert "refit_with_selection" not in det.meta and det.meta["n_selection_images"] > 0
    assert det.meta["n_moved_patches"] == 0  # the SAE that chose the scoring takes no moved copies
    assert det.meta["n_fit_images"] + det.meta["n_calibration_images"] + det.meta["n_selection_images"] == 24
    # the same split and choice; the refit's SAE saw the selection images too, the calibration images neither
    assert det.meta["n_calibration_images"] == refit.meta["n_calibration_images"]
    assert det.meta["scoring_selection"] == refit.meta["scoring_selection"]
    assert refit.meta["n_fit_images"] == det.meta["n_fit_images"] + det.meta["n_selection_images"]


def test_fit_refuses_a_context_window_it_cannot_build(small_data, tmp_path, capsys):
    out = tmp_path / "ctx.safetensors"
    assert main(["fit", str(small_data), "--out", str(out), "--context", "4", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "context must be 0 or an odd integer" in err[0] and not out.exists()


def test_fit_takes_the_engineers_scoring_instead_of_choosing(fitted, small_data, tmp_path):
    """--normalize none (parts placed freely: good images cannot tell, bench/results/selection_transfer.md): the fit
    keeps the raw error, holds no image out to choose, and its metadata carries no selection table."""
    auto = Detector.from_artifact(fitted, "cpu")
    assert "scoring_selection" in auto.meta and auto.meta["n_selection_images"] > 0
    out = tmp_path / "raw.safetensors"
    assert main(["fit", str(small_data), "--out", str(out), "--normalize", "none", *FAST]) == 0
    det = Detector.from_artifact(out, "cpu")
    assert det.config.scoring.normalize == "none"
    assert "scoring_selection" not in det.meta and det.meta["n_selection_images"] == 0


def test_fit_lowers_the_canvas_to_the_images_and_keeps_a_size_the_engineer_gives(fitted, small_data, tmp_path):
    # no --size: generated parts of 320 px long side get the 256 px canvas (never upsampled), recorded on the card
    det = Detector.from_artifact(fitted, "cpu")
    assert det.config.preprocess.size == det.meta["canvas_choice"]["chosen"] == 256
    out = tmp_path / "fixed.safetensors"
    assert main(["fit", str(small_data), "--out", str(out), "--size", "320", *FAST]) == 0
    fixed = Detector.from_artifact(out, "cpu")
    assert fixed.config.preprocess.size == 320 and "canvas_choice" not in fixed.meta
