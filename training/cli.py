"""`sae-inspect`: fit | evaluate | score | explain | demo-data.

Errors the user can fix (missing folder, bad file, unwritable output) end with one
line naming the file and the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from models.artifact import ArtifactError
from models.backbone import BackboneError
from models.config import BackboneConfig, ModelConfig, PreprocessConfig, SAEConfig, ScoringConfig
from models.detector import Detector, resolve_device
from models.imageio import ImageDecodeError, read_image
from training import __version__
from training.fit import FitConfig

log = logging.getLogger("sae-inspect")


def _code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def _model_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        backbone=BackboneConfig(name=a.backbone, stages=tuple(a.stages)),
        preprocess=PreprocessConfig(mode=a.mode, size=a.size, margin=a.margin, tile_scale=a.tile_scale,
                                    overlap=a.overlap),
        sae=SAEConfig(expansion=a.expansion, k=a.k),
        scoring=ScoringConfig(sigma=a.sigma, image_score=a.image_score),
    )


def cmd_fit(a: argparse.Namespace) -> None:
    from training.calibrate import f1_optimal, score_files
    from training.data import fingerprint, good_images, mvtec_test_set
    from training.fit import fit_detector, split_calibration
    from training.save import save_verified

    out = Path(a.out)
    if a.init and Path(a.init).resolve() == out.resolve():
        raise ValueError(f"{out}: --out must differ from --init so the previous artifact stays untouched")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: output folder does not exist")
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"{out.parent}: output folder is not writable")
    t0 = time.perf_counter()
    device = resolve_device(a.device)
    init = Detector.from_artifact(a.init, str(device), a.backbone_weights) if a.init else None
    config = init.config if init else _model_config(a)
    paths = good_images(a.data)
    fit_paths, cal_paths = split_calibration(paths, a.calib_fraction, a.min_calib, a.seed)
    log.info("%d good images: %d to fit the SAE, %d held out for calibration", len(paths), len(fit_paths),
             len(cal_paths))
    from training.calibrate import calibrate

    fit_cfg = FitConfig(steps=a.steps, max_patches=a.max_patches, seed=a.seed)
    det = fit_detector(fit_paths, config, fit_cfg, device, a.backbone_weights, init)
    det.calibration = calibrate(det, cal_paths, a.alpha, a.pixel_quantile, a.seed)
    now = dt.datetime.now(dt.UTC)
    det.meta.update({
        "name": out.name.removesuffix(".safetensors"),
        "version": f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
        "created": now.isoformat(timespec="seconds"),
        "code_version": _code_version(),
        "n_calibration_images": len(det.calibration.scores),
        "calibration_split": {"fraction": a.calib_fraction, "min_count": a.min_calib, "seed": a.seed},
        "dataset_fingerprint": fingerprint(paths),
        "data": [str(Path(d).resolve()) for d in a.data],
        "parent_version": init.version if init else None,
        "fit_config": {"steps": fit_cfg.steps, "batch_size": fit_cfg.batch_size, "lr": fit_cfg.lr,
                       "max_patches": fit_cfg.max_patches},
    })
    if a.defects:
        items = [i for i in mvtec_test_set(a.defects)] if (Path(a.defects) / "test").is_dir() else None
        bad_paths = [i.path for i in items if i.defect != "good"] if items else good_images([a.defects])
        _, bad, _ = score_files(det, bad_paths, desc="defects")
        report = f1_optimal(np.asarray(det.calibration.scores), bad)
        det.meta["f1_optimal_on_defects"] = report
        log.info("labelled defects: F1-optimal threshold %.4g (F1 %.3f, precision %.3f, recall %.3f); "
                 "the decision rule stays the conformal threshold %.4g", report["threshold"], report["f1"],
                 report["precision"], report["recall"], det.calibration.threshold)
    save_verified(det, out, cal_paths[0])
    elapsed = time.perf_counter() - t0
    log.info("wrote %s (version %s): threshold %.4g at alpha=%g from %d calibration images; "
             "%d images in %.1fs (%.1f img/s)", out, det.version, det.calibration.threshold, a.alpha,
             len(det.calibration.scores), len(paths), elapsed, len(paths) / elapsed)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from training.evaluate import evaluate, write_results

    det = Detector.from_artifact(a.model, a.device)
    metrics, details = evaluate(det, a.data)
    write_results(metrics, details, det, Path(a.out))
    shown = {k: v for k, v in metrics.items() if k != "skipped"}
    print(json.dumps(shown, indent=2))
    log.info("wrote %s/metrics.json, scores.csv and report.png", a.out)


def cmd_score(a: argparse.Namespace) -> int:
    det = Detector.from_artifact(a.model, a.device)
    failures = 0
    for f in a.files:
        try:
            r = det.inspect([read_image(f)])[0]
        except ImageDecodeError as e:
            failures += 1
            print(json.dumps({"file": f, "error": str(e)}) if a.json else f"{f}\terror: {e}")
            continue
        verdict = "anomalous" if r.anomalous else "good"
        if a.json:
            print(json.dumps({"file": f, "score": r.score, "threshold": r.threshold, "p_value": r.p_value,
                              "verdict": verdict, "regions": [x._asdict() for x in r.regions]}))
        else:
            print(f"{f}\tscore={r.score:.6g}\tthreshold={r.threshold:.6g}\tp={r.p_value:.4f}\t{verdict}")
    return 1 if failures else 0


def cmd_explain(a: argparse.Namespace) -> None:
    from training.report import write_explanation

    det = Detector.from_artifact(a.model, a.device)
    image = read_image(a.image)
    result, regions = det.explain(image)
    write_explanation(image, result, regions, det, Path(a.out))
    verdict = "anomalous" if result.anomalous else "good"
    print(f"{a.image}\tscore={result.score:.6g}\tthreshold={result.threshold:.6g}\tp={result.p_value:.4f}\t{verdict}")
    for i, e in enumerate(regions, 1):
        print(f"region {i} {e.box}: {100 * e.error_share:.0f}% of the error, {e.kind} (novelty {e.novelty:.2f}, "
              f"misplacement {e.misplacement:.2f}); unusual latents {[u.latent for u in e.unusual]}; "
              f"expected here {[j for j, _ in e.expected]}")
    log.info("wrote %s", a.out)


def cmd_demo_data(a: argparse.Namespace) -> None:
    from models.synthetic import write_dataset

    root = write_dataset(a.out, n_train=a.n_train, n_test_good=a.n_test, n_test_bad=a.n_test, seed=a.seed)
    log.info("wrote generated parts to %s (MVTec layout)", root)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sae-inspect", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="fit a model on good images and calibrate its threshold")
    f.add_argument("data", nargs="+", help="folders of good images, or MVTec category folders (train/good)")
    f.add_argument("--out", required=True, help="artifact path to write (name.safetensors)")
    f.add_argument("--init", help="start from this artifact (retraining); it is left untouched")
    f.add_argument("--defects", help="optional folder of labelled defects: report the F1-optimal threshold")
    f.add_argument("--alpha", type=float, default=0.01, help="target false-alarm rate (default 0.01)")
    f.add_argument("--calib-fraction", type=float, default=0.2)
    f.add_argument("--min-calib", type=int, default=30, help="at least this many calibration images")
    f.add_argument("--pixel-quantile", type=float, default=0.999)
    f.add_argument("--backbone", default="efficientnet_lite0")
    f.add_argument("--backbone-weights", help="local weights file for the backbone")
    f.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    f.add_argument("--mode", default="letterbox", choices=["letterbox", "resize", "tile"])
    f.add_argument("--size", type=int, default=256)
    f.add_argument("--margin", type=int, default=PreprocessConfig.margin,
                   help="letterbox: reflected border around the part, in canvas pixels")
    f.add_argument("--tile-scale", type=float, default=1.0)
    f.add_argument("--overlap", type=int, default=32)
    f.add_argument("--expansion", type=int, default=SAEConfig.expansion)
    f.add_argument("--k", type=int, default=SAEConfig.k)
    f.add_argument("--sigma", type=float, default=ScoringConfig.sigma)
    f.add_argument("--image-score", default="max", choices=["max", "top_mean"])
    f.add_argument("--steps", type=int, default=FitConfig.steps)
    f.add_argument("--max-patches", type=int, default=300_000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.set_defaults(func=cmd_fit)

    e = sub.add_parser("evaluate", help="metrics and a visual report on an MVTec-layout folder")
    e.add_argument("model")
    e.add_argument("data")
    e.add_argument("--out", required=True, help="folder for metrics.json, scores.csv, report.png")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("score", help="score / p-value / verdict for image files")
    s.add_argument("model")
    s.add_argument("files", nargs="+")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_score)

    x = sub.add_parser("explain", help="write an explanation image: heat map, regions, atlas crops")
    x.add_argument("model")
    x.add_argument("image")
    x.add_argument("--out", required=True, help="PNG file to write")
    x.add_argument("--device", default="auto")
    x.set_defaults(func=cmd_explain)

    d = sub.add_parser("demo-data", help="write generated good and defective parts (MVTec layout)")
    d.add_argument("out")
    d.add_argument("--n-train", type=int, default=120)
    d.add_argument("--n-test", type=int, default=12)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo_data)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return a.func(a) or 0
    except (ArtifactError, BackboneError, ImageDecodeError, FileNotFoundError, NotADirectoryError,
            PermissionError, ValueError, OSError) as e:
        print(f"sae-inspect {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sae-inspect {a.cmd}: interrupted; no artifact was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
