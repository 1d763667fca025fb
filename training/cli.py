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

from models.artifact import ArtifactError
from models.backbone import BackboneError
from models.config import NORMALIZE_CHOICES, BackboneConfig, ModelConfig, PreprocessConfig, SAEConfig, ScoringConfig
from models.detector import Detector, resolve_device
from models.imageio import ImageDecodeError
from training import __version__
from training.calibrate import CalibrationConfig
from training.fit import FitConfig

log = logging.getLogger("sae-inspect")
QUIET_LOGGERS = ("onnxscript", "onnx_ir")
"""Libraries whose INFO lines say nothing to the engineer running a fit (shown with --verbose)."""


def _code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


# Flags that shape the model: they default to None so that the config dataclasses hold the only defaults,
# and so that --init can tell which were given (the model shape then comes from the init artifact).
MODEL_FLAGS = {  # flag -> (config section, field)
    "backbone": ("backbone", "name"), "stages": ("backbone", "stages"),
    "mode": ("preprocess", "mode"), "size": ("preprocess", "size"), "margin": ("preprocess", "margin"),
    "tile_scale": ("preprocess", "tile_scale"), "overlap": ("preprocess", "overlap"),
    "expansion": ("sae", "expansion"), "k": ("sae", "k"),
    "sigma": ("scoring", "sigma"), "image_score": ("scoring", "image_score"), "context": ("scoring", "context"),
    "normalize": ("scoring", "normalize"), "error": ("scoring", "error"), "pool": ("scoring", "pool"),
}
_SECTIONS = {"backbone": BackboneConfig, "preprocess": PreprocessConfig, "sae": SAEConfig, "scoring": ScoringConfig}


def _given_model_flags(a: argparse.Namespace) -> dict[str, object]:
    return {flag: getattr(a, flag) for flag in MODEL_FLAGS if getattr(a, flag) is not None}


def _model_config(a: argparse.Namespace) -> ModelConfig:
    values: dict[str, dict[str, object]] = {section: {} for section in _SECTIONS}
    for flag, value in _given_model_flags(a).items():
        section, name = MODEL_FLAGS[flag]
        values[section][name] = tuple(value) if isinstance(value, list) else value
    return ModelConfig(**{section: kind(**values[section]) for section, kind in _SECTIONS.items()})


def cmd_fit(a: argparse.Namespace) -> None:
    from training.data import fingerprint, good_images, mvtec_test_set
    from training.pipeline import fit_calibrated
    from training.save import save_verified

    out = Path(a.out)
    if a.init:
        given = _given_model_flags(a)
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise ValueError(f"{flag} cannot be used with --init: a retrained model keeps the shape of {a.init}; "
                             "only --steps, --max-patches, --repair, --augment, --seed and calibration flags apply")
        if Path(a.init).resolve() == out.resolve():
            raise ValueError(f"{out}: --out must differ from --init so the previous artifact stays untouched")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # like `mkdir -p`: a new folder is created
    except OSError as e:
        raise OSError(f"{out.parent}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"{out.parent}: output folder is not writable")
    t0 = time.perf_counter()
    device = resolve_device(a.device)
    init = Detector.from_artifact(a.init, str(device), a.backbone_weights) if a.init else None
    config = init.config if init else _model_config(a)
    cal_cfg = CalibrationConfig(alpha=a.alpha, pixel_quantile=a.pixel_quantile, fraction=a.calib_fraction,
                                min_count=a.min_calib, seed=a.seed, select_count=a.select_count,
                                refit_below=a.refit_below, groups=a.calib_groups)
    fit_cfg = FitConfig(steps=a.steps, max_patches=a.max_patches, repair=a.repair, augment=a.augment,
                        seed=a.seed, canvas="native" if a.size is None else "fixed")  # a side given is kept
    paths = good_images(a.data)
    defects = None
    if a.defects:
        items = mvtec_test_set(a.defects) if (Path(a.defects) / "test").is_dir() else None
        defects = [i.path for i in items if i.defect != "good"] if items else good_images([a.defects])
    now = dt.datetime.now(dt.UTC)
    provenance = {
        "name": out.name.removesuffix(".safetensors"),
        "version": f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
        "created": now.isoformat(timespec="seconds"),
        "code_version": _code_version(),
        "dataset_fingerprint": fingerprint(paths),
        "data": [str(Path(d).resolve()) for d in a.data],
    }
    det = fit_calibrated(paths, config, fit_cfg, cal_cfg, device, a.backbone_weights, init, provenance, defects)
    save_verified(det, out, paths[0])
    elapsed = time.perf_counter() - t0
    cal = det.calibration
    log.info("wrote %s (version %s): threshold %.4g at alpha=%g (guaranteed on average; asked %g; this model's own "
             "rate at most %.3g with 90 %% confidence) from %d calibration images; %d images in %.1fs (%.1f img/s)",
             out, det.version, cal.threshold, cal.alpha, cal.requested_alpha, cal.false_alarm_rate_90,
             len(cal.scores), len(paths), elapsed, len(paths) / elapsed)
    if a.export:
        _export_beside(det, out, paths)
    elif out.with_suffix(".onnx").exists():  # it was exported from the artifact just replaced
        out.with_suffix(".onnx").unlink()
        log.info("removed %s: it was exported from the previous %s", out.with_suffix(".onnx"), out.name)


def _export_beside(det: Detector, out: Path, paths: list[Path]) -> None:
    """Write the validated ONNX export next to the artifact (``<out>.onnx``), so a CPU service serves the
    faster runtime by default. Without ONNX support, or when validation fails, no export is left there
    (an older one would be stale); the artifact alone is complete."""
    onnx_out = out.with_suffix(".onnx")
    t0 = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401 - the service needs it to serve the export

        from training.export import export_onnx, validation_sample

        summary = export_onnx(det, out, onnx_out, validation_sample(paths, 16))
    except ImportError as e:  # onnxruntime, or the exporter's onnx / onnxscript
        onnx_out.unlink(missing_ok=True)
        log.warning("no ONNX export written (%s is not installed; pip install 'sae-inspect[export]'): %s is "
                    "served with PyTorch", e.name, out.name)
        return
    except (ArtifactError, ValueError) as e:
        onnx_out.unlink(missing_ok=True)
        log.error("ONNX export failed (%s); %s is complete and is served with PyTorch", e, out.name)
        return
    log.info("wrote %s in %.1fs: scores of %d images match PyTorch within %.1e x the score scale", onnx_out,
             time.perf_counter() - t0, summary["images"], summary["max_score_gap_over_scale"])


def cmd_evaluate(a: argparse.Namespace) -> None:
    from training.evaluate import evaluate, write_results

    det = Detector.from_artifact(a.model, a.device)
    metrics, details = evaluate(det, a.data)
    write_results(metrics, details, det, Path(a.out))
    shown = {k: v for k, v in metrics.items() if k != "skipped"}
    print(json.dumps(shown, indent=2))
    log.info("wrote %s/metrics.json, scores.csv and report.png", a.out)


def cmd_score(a: argparse.Namespace) -> int:
    from models.portable import load_scorer

    det = load_scorer(a.model, a.device, a.alpha)
    runtime = getattr(det, "runtime", "pytorch")
    failures = 0
    for f in a.files:
        try:
            r = det.inspect([det.read(f)])[0]
        except (ImageDecodeError, ValueError) as e:  # undecodable, or an image no verdict can be given for
            failures += 1
            print(json.dumps({"file": f, "error": str(e)}) if a.json else f"{f}\terror: {e}")
            continue
        verdict = "anomalous" if r.anomalous else "good"
        if a.json:
            print(json.dumps({"file": f, "score": r.score, "threshold": r.threshold, "alpha": r.alpha,
                              "p_value": r.p_value, "verdict": verdict, "runtime": runtime,
                              "regions": [x._asdict() for x in r.regions]}))
        else:
            print(f"{f}\tscore={r.score:.6g}\tthreshold={r.threshold:.6g}\talpha={r.alpha:g}\tp={r.p_value:.4f}\t"
                  f"{verdict}")
    return 1 if failures else 0


def cmd_export(a: argparse.Namespace) -> None:
    from training.data import good_images
    from training.export import TOLERANCE, export_onnx, validation_sample

    det = Detector.from_artifact(a.model, "cpu")
    summary = export_onnx(det, Path(a.model), Path(a.out), validation_sample(good_images(a.images), 64),
                          a.tolerance or TOLERANCE)
    log.info("wrote %s (%.1f MB): scores of %d images match PyTorch within %.1e x the score scale (worst %s)",
             a.out, summary["bytes"] / 2**20, summary["images"], summary["max_score_gap_over_scale"],
             summary["worst_image"])


def cmd_explain(a: argparse.Namespace) -> None:
    from training.report import write_explanation

    det = Detector.from_artifact(a.model, a.device)
    image = det.read(a.image)
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
    c = CalibrationConfig
    f.add_argument("--alpha", type=float, default=c.alpha, help=f"target false-alarm rate (default {c.alpha})")
    f.add_argument("--calib-fraction", type=float, default=c.fraction,
                   help=f"share of good images held out for calibration (default {c.fraction})")
    f.add_argument("--min-calib", type=int, default=c.min_count,
                   help=f"at least this many calibration images (default {c.min_count})")
    f.add_argument("--calib-groups", default=c.groups,
                   help="how images group into physical parts, so calibration covers new parts: runs:K (K "
                        "consecutive file names per folder), none, folder, pattern:REGEX (first match in the "
                        "file name) or file:PATH (CSV 'name,group') "
                        f"(default {c.groups})")
    f.add_argument("--select-count", type=int, default=c.select_count,
                   help=f"good images held out to choose the scoring (default {c.select_count})")
    f.add_argument("--refit-below", type=int, default=c.refit_below,
                   help="with fewer fit images than this, the selection images fit the SAE again with them once the "
                        f"scoring is chosen; 0: never (default {c.refit_below})")
    f.add_argument("--pixel-quantile", type=float, default=c.pixel_quantile,
                   help=f"good-pixel quantile that sets the region threshold (default {c.pixel_quantile})")
    f.add_argument("--backbone-weights", help="local weights file for the backbone")
    m = f.add_argument_group("model shape (defaults from models/config.py; not with --init)")
    m.add_argument("--backbone", help=f"default {BackboneConfig.name}")
    m.add_argument("--stages", type=int, nargs="+", help=f"default {' '.join(map(str, BackboneConfig.stages))}")
    m.add_argument("--mode", choices=["letterbox", "resize", "tile"], help=f"default {PreprocessConfig.mode}")
    m.add_argument("--size", type=int, help=f"canvas side, kept as given. Default: the largest of 256 / 384 / "
                   f"{PreprocessConfig.size} not above the median long side of the good images (small images are "
                   "never upsampled; the choice is on the model card)")
    m.add_argument("--margin", type=int, help="letterbox: reflected border around the part, in canvas pixels "
                   f"(default {PreprocessConfig.margin})")
    m.add_argument("--tile-scale", type=float, help=f"default {PreprocessConfig.tile_scale}")
    m.add_argument("--overlap", type=int, help=f"default {PreprocessConfig.overlap}")
    m.add_argument("--expansion", type=int, help=f"default {SAEConfig.expansion}")
    m.add_argument("--k", type=int, help=f"default {SAEConfig.k}")
    m.add_argument("--pool", type=int, help="odd window each backbone stage is averaged over per patch (1 = the "
                   f"patch's own cell; measured in bench/results/accuracy.md), default {ScoringConfig.pool}")
    m.add_argument("--sigma", type=float, help=f"default {ScoringConfig.sigma}")
    m.add_argument("--image-score", choices=["max", "top_mean"], help=f"default {ScoringConfig.image_score}")
    m.add_argument("--normalize", choices=[*NORMALIZE_CHOICES, "auto"],
                   help="patch score: 'auto' (chosen on held-out good images with synthetic defects), 'none' (the "
                   "raw error: for parts placed freely, whose image positions do not show the same part of the "
                   "product each time), 'position' or 'position_novelty' (parts held in a fixed pose); "
                   f"default {ScoringConfig.normalize}")
    m.add_argument("--context", type=int, help="learned context: 0 = each patch alone, or an odd window c >= 3 "
                   "whose mean follows each patch feature (twice the SAE input; measured in "
                   "bench/results/accuracy.md), "
                   f"default {ScoringConfig.context}")
    m.add_argument("--error", choices=["all", "patch"], help="with learned context, the features a patch's "
                   "reconstruction error is taken over: 'all', or 'patch' (its own, not the neighbourhood mean); "
                   f"default {ScoringConfig.error}")
    f.add_argument("--steps", type=int, default=FitConfig.steps, help=f"default {FitConfig.steps}")
    f.add_argument("--max-patches", type=int, default=FitConfig.max_patches,
                   help=f"default {FitConfig.max_patches}")
    f.add_argument("--no-export", dest="export", action="store_false",
                   help="do not write the validated ONNX export <out>.onnx beside the artifact (by default it is "
                        "written when onnxruntime is installed; a CPU service then serves it); an older one there "
                        "is removed")
    f.add_argument("--repair", type=float, default=FitConfig.repair,
                   help="share of each SAE batch trained to repair corrupted features (synthetic defects and "
                        f"feature noise in, the clean feature out); 0 = plain copy; default {FitConfig.repair}")
    f.add_argument("--augment", type=int, default=FitConfig.augment,
                   help=f"on a fit of fewer than {FitConfig.augment_below} images, moved copies of each image (pose "
                        f"jitter) that train the SAE too; 0 = none; default {FitConfig.augment}")
    f.add_argument("--seed", type=int, default=FitConfig.seed)
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
    s.add_argument("--alpha", type=float, help="decide at this false-alarm rate instead of the calibrated one "
                   "(threshold re-derived from the stored calibration scores; works on .onnx exports too)")
    s.set_defaults(func=cmd_score)

    o = sub.add_parser("export", help="one ONNX file with threshold and preprocessing inside, validated")
    o.add_argument("model", help=".safetensors artifact")
    o.add_argument("--out", required=True, help=".onnx file to write")
    o.add_argument("--images", required=True, nargs="+",
                   help="good images (folders or MVTec category) to validate the export on (up to 64 used)")
    o.add_argument("--tolerance", type=float, default=None,
                   help="largest accepted score difference as a fraction of the threshold (default 1e-3)")
    o.set_defaults(func=cmd_export)

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
    if not a.verbose:  # the ONNX exporter's graph optimiser logs each rewrite at INFO: dozens of lines per export
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
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
