"""Few good images: the default against anomalib PaDiM when a line has only ~90 of them.

    python -m bench.small_train [--images 90] [set ...]

Issue 20 measured the default 7.5 points behind PaDiM on one held-out set, a small fabric set of 90 training
images, and ahead on six others. A split-conformal fit holds images out (calibration: 20 %, at least 30; the
scoring choice: up to 48, at most a quarter of the rest), so on 90 images the SAE fits on about 45 while PaDiM
fits on all 90. This bench asks whether that shows on the shared sets: each set's train/good cut to a seeded
sample of `--images` files (symlinks under bench/work, as bench/anomalib_compare.py's `subset`; the data is never
copied), then the default fit (every default, as `sae-inspect fit`) and anomalib PaDiM at 256 px on the same
images, both evaluated on the set's whole test split with the shared metric code. One run each; finished rows are
kept in bench/results/small_train.json and skipped on a rerun. Writes bench/results/small_train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.accuracy import DATASETS, METRICS, RESULTS, WORK, changed_config, test_auroc_by_scoring
from bench.anomalib_compare import ensure_anomalib, run_row, subset
from bench.fit_eval import machine

IMAGES = 90
"""Good training images kept per set by default (`--images`)."""
OURS = "SAE Inspect (default)"
PADIM = "anomalib PaDiM, 256 px"
OFF = {"augment": 0}  # the rows before moved copies were the default (2026-12-05 evening) keep them off
VARIANTS = {  # name -> (label, model config changes {section: {field: value}}, fit and calibration config changes)
    "augment0": ("no moved copies (augment 0; the default before 2026-12-05 evening)", {}, OFF, {}),
    "norefit": ("selection images kept out of the SAE, no moved copies (refit_below 0, augment 0; the default "
                "before 2026-12-05)", {}, OFF, {"refit_below": 0}),
    "position": ("normalize position set by the engineer (no selection split: its images fit the SAE), augment 0",
                 {"scoring": {"normalize": "position"}}, OFF, {}),
    "expansion1": ("SAE expansion 1 (a dictionary 8 x smaller: fewer atoms to copy a few images with), refit_below "
                   "0, augment 0", {"sae": {"expansion": 1}}, OFF, {"refit_below": 0}),
    "steps600": ("SAE 600 steps (default 2000: about 110 passes over a reservoir of 35 images at 256 px), "
                 "refit_below 0, augment 0", {}, {"steps": 600, **OFF}, {"refit_below": 0}),
    "context0": ("no learned context (context 0), refit_below 0, augment 0", {"scoring": {"context": 0}}, OFF,
                 {"refit_below": 0}),
    **{f"seed{s}": (f"every default, fit and split seed {s} (default 0)", {}, {"seed": s}, {"seed": s})
       for s in (1, 2)},
    **{f"augment0_seed{s}": (f"augment 0, fit and split seed {s}", {}, {"seed": s, **OFF}, {"seed": s})
       for s in (1, 2)},
    **{f"runs3{'_seed' + str(s) if s else ''}": (
        f"calibration groups runs:3 (every other default), fit and split seed {s}", {}, {"seed": s},
        {"groups": "runs:3", "seed": s}) for s in (0, 1, 2)},
    **{f"single{'_seed' + str(s) if s else ''}": (
        f"calibration groups none (single images; every other default), fit and split seed {s}", {}, {"seed": s},
        {"groups": "none", "seed": s}) for s in (0, 1, 2)},
    **{f"norefit_seed{s}": (f"refit_below 0, augment 0, fit and split seed {s}", {}, {"seed": s, **OFF},
                            {"refit_below": 0, "seed": s})
       for s in (1, 2)},
}
"""What might make a fit on few images weaker, one change at a time (`--variants`)."""


def run_ours(data: Path, train: Path, variant: str | None = None) -> dict:
    import torch

    from training.calibrate import CalibrationConfig
    from training.data import good_images
    from training.evaluate import evaluate
    from training.fit import FitConfig
    from training.pipeline import fit_calibrated

    torch.set_num_threads(2)
    _, model_changes, fit_changes, cal_changes = VARIANTS[variant] if variant else ("", {}, {}, {})
    config = changed_config(model_changes)
    paths = good_images([train])
    t0 = time.perf_counter()
    det = fit_calibrated(paths, config, FitConfig(**fit_changes), CalibrationConfig(**cal_changes), device="cpu",
                         provenance={"version": "bench"})
    fit_s = time.perf_counter() - t0
    det.save(WORK / f"small_train_{data.name}{'_' + variant if variant else ''}.safetensors")
    m, _ = evaluate(det, data)
    return {"n_train_images": len(paths), "fit_seconds": fit_s, "canvas": det.config.preprocess.size,
            # was the choice right? (the default's rows only: a second pass over the test split)
            "test_auroc_by_scoring": test_auroc_by_scoring(det, data) if variant is None else None,
            "chosen": det.config.scoring.normalize, "n_fit_images": det.meta.get("n_fit_images"),
            "n_selection_images": det.meta.get("n_selection_images"),
            "n_calibration_images": det.meta.get("n_calibration_images"), **{k: m.get(k) for k in METRICS}}


SEEDED = {  # three-seed columns: variant per seed 0, 1, 2 (None: the default)
    "default (moved copies, refit below 100 fit images)": (None, "seed1", "seed2"),
    "no moved copies (augment 0)": ("augment0", "augment0_seed1", "augment0_seed2"),
    "neither (augment 0, refit_below 0)": ("norefit", "norefit_seed1", "norefit_seed2"),
}


GROUPINGS = {  # calibration groups on 90 images, seeds 0, 1, 2
    "runs of 7 (default)": SEEDED["default (moved copies, refit below 100 fit images)"],
    "runs of 3": ("runs3", "runs3_seed1", "runs3_seed2"),
    "single images": ("single", "single_seed1", "single_seed2"),
}


def mean3(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def table(rows: dict, images: int) -> str:
    def f(v, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    out = [f"Machine: {machine()}; command: `python -m bench.small_train --images {images}`. Each set's train/good "
           f"cut to a seeded sample of {images} images; ours: every default (canvas from the images' sizes, "
           "scoring chosen on held-out good images, then, with fewer than 100 fit images, the SAE fitted again with "
           "the selection images, and two moved copies of each fit image train the SAE too; split-conformal "
           "calibration at alpha 0.01); PaDiM: anomalib "
           "2.7.0 at 256 px, same backbone, all the sample's images; both on the whole test split. One run each.", "",
           "| set | method | images the SAE fitted on / chose the scoring / calibrated | canvas, scoring | image AUROC "
           "| pixel AUROC | AUPRO@30% | recall at alpha | false alarms on test/good (the card's 90 % bound) | fit s "
           "| test image AUROC none / position / position_novelty |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    sets = sorted({r["dataset"] for r in rows.values()})
    for s in sets:
        for method in (OURS, PADIM, *(f"variant: {v[0]}" for v in VARIANTS.values())):
            r = rows.get(f"{s}|{method}")
            if r is None:
                continue
            split = (f"{r['n_fit_images']} / {r['n_selection_images']} / {r['n_calibration_images']}"
                     if method != PADIM else f"{r.get('n_train_images', images)} / - / -")
            how = f"{r['canvas']} px, {r['chosen']}" if method != PADIM else "256 px"
            out.append(f"| {s} | {method} | {split} | {how} | {f(r.get('image_auroc'))} | {f(r.get('pixel_auroc'))} | "
                       f"{f(r.get('aupro_30'))} | {f(r.get('recall'))} | {f(r.get('false_alarm_rate'))}{bound90(r)} | "
                       f"{f(r.get('fit_seconds'), '.0f')} | "
                       f"{' / '.join(f(v) for v in (r.get('test_auroc_by_scoring') or {}).values()) or '-'} |")

    def key(s: str, name: str | None) -> str:
        return f"{s}|{OURS if name is None else f'variant: {VARIANTS[name][0]}'}"

    def auroc(s: str, name: str | None) -> float:
        return rows[key(s, name)]["image_auroc"]

    seeded = [s for s in sets if all(key(s, v) in rows for names in SEEDED.values() for v in names)]
    if seeded:
        out += ["", "Over three seeds (fit and split seeds 0, 1, 2: which images fit, choose and calibrate, the SAE's "
                "start, the patch sample, the moved copies and the synthetic defects), image AUROC mean (min-max):",
                "", f"| set | {' | '.join(SEEDED)} | default - no moved copies, per seed | PaDiM 256 px |",
                "|---|" + "---|" * (len(SEEDED) + 2)]
        every = {column: [] for column in SEEDED}
        for s in seeded:
            runs = {column: [auroc(s, v) for v in names] for column, names in SEEDED.items()}
            for column, values in runs.items():
                every[column] += values
            first, second = list(runs.values())[:2]
            diffs = " / ".join(f"{a - b:+.3f}" for a, b in zip(first, second, strict=True))
            padim = rows.get(f"{s}|{PADIM}", {}).get("image_auroc")
            out.append(f"| {s} | {' | '.join(mean3(v) for v in runs.values())} | {diffs} | {f(padim)} |")
        out.append(f"| mean over sets and seeds | {' | '.join(f'{sum(v) / len(v):.3f}' for v in every.values())} "
                   "| | |")
        out += ["", "False alarms on test/good per seed 0 / 1 / 2 (the card's 90 % bound on one model's own rate, "
                "from its calibration count: one model in ten may exceed it by chance):", "",
                f"| set | n good | {' | '.join(SEEDED)} |", "|---|---|" + "---|" * len(SEEDED)]
        for s in seeded:
            cells = [" / ".join(f"{rows[key(s, v)]['false_alarms']}{bound90(rows[key(s, v)], 'count')}"
                                for v in names) for names in SEEDED.values()]
            out.append(f"| {s} | {rows[key(s, None)]['n_good']} | {' | '.join(cells)} |")
    shorter = [s for s in sets if any(all(key(s, v) in rows for v in names) for names in list(GROUPINGS.values())[1:])]
    if shorter:
        out += ["", "Calibration groups on 90 images (`--variants runs3 runs3_seed1 runs3_seed2 single single_seed1 "
                "single_seed2`), seeds 0 / 1 / 2: the default's runs of 7 consecutive file names (runs:8 capped at "
                "1/12 of the images; 13 parts, the calibration takes 5), runs of 3 (30 parts, 10) and single images "
                "(groups none); image AUROC, then false alarms on test/good (the card's 90 % bound):", "",
                f"| set | n good | {' | '.join(f'image AUROC, {g}' for g in GROUPINGS)} "
                f"| {' | '.join(f'false alarms, {g}' for g in GROUPINGS)} |",
                "|---|---|" + "---|" * (2 * len(GROUPINGS))]
        for s in shorter:
            runs = [[rows.get(key(s, v)) for v in names] for names in GROUPINGS.values()]
            auroc = [" / ".join(f"{r['image_auroc']:.3f}" for r in rs) if all(rs) else "-" for rs in runs]
            alarms = [" / ".join(f"{r['false_alarms']}{bound90(r, 'count')}" for r in rs) if all(rs) else "-"
                      for rs in runs]
            out.append(f"| {s} | {rows[key(s, None)]['n_good']} | {' | '.join(auroc)} | {' | '.join(alarms)} |")
    both = [s for s in sets if f"{s}|{OURS}" in rows and f"{s}|{PADIM}" in rows]
    if both:
        mean = {m: sum(rows[f"{s}|{m}"]["image_auroc"] for s in both) / len(both) for m in (OURS, PADIM)}
        out += ["", f"Mean image AUROC over {len(both)} sets: ours {mean[OURS]:.3f}, PaDiM {mean[PADIM]:.3f}."]
    return "\n".join(out) + "\n"


def bound90(row: dict, unit: str = "rate") -> str:
    """' (x)': the false-alarm rate (or count of the row's good test images) the card says one model stays under
    with 90 % confidence, from the row's calibration count at the bench's alpha (the default's)."""
    from models.decision import false_alarm_bound, min_alpha
    from training.calibrate import CalibrationConfig

    n = row.get("n_calibration_images")
    if not n:
        return ""
    bound = false_alarm_bound(n, max(CalibrationConfig().alpha, min_alpha(n)))
    return f" ({bound:.3f})" if unit == "rate" else f" ({bound * row['n_good']:.0f})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("datasets", nargs="*", help="set names (default: every shared set)")
    p.add_argument("--images", type=int, default=IMAGES, help=f"good training images kept per set (default {IMAGES})")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=[],
                   help="also fit these variants of ours (on the sets named, or every set)")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    path = RESULTS / "small_train.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else {}
    if not a.table_only:
        names = a.datasets or sorted(d.name for d in DATASETS.iterdir() if (d / "train" / "good").is_dir())
        py = None  # the peer's virtualenv is built only if a PaDiM row is missing
        for name in names:
            data = DATASETS / name
            n_all = len(list((data / "train" / "good").iterdir()))
            train = subset(data, a.images / n_all)
            plan = {OURS: None, PADIM: None} | {f"variant: {VARIANTS[v][0]}": v for v in a.variants}
            for method, variant in plan.items():
                key = f"{name}|{method}"
                if key in rows:
                    continue
                print(f"[run] {key} ({a.images} of {n_all} images)", flush=True)
                if method != PADIM:
                    row = run_ours(data, train, variant)
                else:
                    py = py or ensure_anomalib()
                    with open(WORK / "small_train_anomalib.log", "a") as log:
                        row = run_row([str(py), "-m", "bench.anomalib_worker", "--data", str(data), "--train",
                                       str(train), "--work", str(WORK / "anomalib"), "--method", "padim"], log)
                rows[key] = {"dataset": name, "method": method, "images": a.images, **row}
                path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
                print(f"[done] {key}: image AUROC {rows[key].get('image_auroc')}", flush=True)
    md = table(rows, a.images)
    (RESULTS / "small_train.md").write_text(md)
    print(md)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
