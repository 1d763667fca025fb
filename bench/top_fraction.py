"""The image score's top fraction, swept on each shared set's default model.

The default image score is the mean of the top 1 % of the anomaly map's pixels (`ScoringConfig.top_fraction`),
chosen against the map maximum when the canvas was 256 px; no other fraction was measured. Here each set's
default model (fitted as `python -m bench.accuracy` fits it, bench/work/accuracy_{set}.safetensors; fitted here
when missing) scores its own calibration split and the full test split once, and the image score is taken from
the same work maps for every fraction in FRACTIONS and for the maximum. Each score is recalibrated on the same
calibration images (split-conformal at the model card's alpha), so every row's threshold, recall and false-alarm
rate are its own. One more row takes the image's own level off (the top 1 % mean minus the map's median): a line
whose good images differ by their overall level (lighting, a board's density) would raise the good images' upper
tail, which is where the threshold at alpha sits. The scoring normalisation stays the one the fit chose (with
1 %); a default changed from this table would choose again.

    python -m bench.top_fraction    # ~25 min on 2 cores with no model fitted; writes
                                    # bench/results/top_fraction.{json,md,png}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.accuracy import DATASETS, DEFAULT, RES, RESULTS, WORK
from bench.fit_eval import machine

SETS = ("bsdata_pitting", "deeppcb", "magnetic_tile", "tire")
FRACTIONS = (0.001, 0.003, 0.01, 0.03, 0.1)
SCORES = [("max", 1.0)] + [("top_mean", f) for f in FRACTIONS] + [("minus_median", 0.01)]
OUT = RESULTS / "top_fraction"


def label(mode: str, fraction: float) -> str:
    if mode == "minus_median":
        return f"top {fraction:.1%} mean minus the map's median"
    return "map maximum" if mode == "max" else f"top {fraction:.1%} mean"


def variant_scores(det, paths: list) -> tuple[list, np.ndarray]:
    """Image files -> (the paths that decoded, (n, len(SCORES)) image scores of each from one work map)."""
    from models.decision import image_score
    from training.calibrate import score_files

    def score(m: np.ndarray, mode: str, f: float) -> float:
        if mode == "minus_median":  # not a product mode: measured here only
            return image_score(m, "top_mean", f) - float(np.median(m))
        return image_score(m, mode, f)

    kept, _, maps = score_files(det, paths)
    return kept, np.asarray([[score(m, mode, f) for mode, f in SCORES] for m in maps], np.float64)


def model_for(name: str):
    import torch

    from models.config import ModelConfig
    from models.detector import Detector
    from training.data import good_images
    from training.pipeline import fit_calibrated

    torch.set_num_threads(2)
    path = WORK / f"accuracy_{name}.safetensors"
    if not path.exists():  # bench.accuracy's own call (run_ours), so the 1 % row is its default row
        print(f"{name}: fitting the default model -> {path}", flush=True)
        WORK.mkdir(parents=True, exist_ok=True)
        fit_calibrated(good_images([DATASETS / name]), ModelConfig(), device="cpu",
                       provenance={"version": "bench"}).save(path)
    return Detector.from_artifact(path, "cpu")


def measure(name: str) -> dict:
    from models.decision import conformal_threshold, decide_all
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images, mvtec_test_set
    from training.metrics import auroc, best_recall_at_far

    det = model_for(name)
    t0 = time.perf_counter()
    off = det.offline()
    cal_paths = split_images(good_images([DATASETS / name]), CalibrationConfig()).calibrate
    _, cal = variant_scores(off, cal_paths)
    items = mvtec_test_set(DATASETS / name)
    kind = {i.path: i.defect for i in items}
    kept, test = variant_scores(off, [i.path for i in items])
    labels = np.array([kind[p] != "good" for p in kept])
    alpha = det.calibration.alpha
    rows = []
    for j, (mode, f) in enumerate(SCORES):
        threshold = conformal_threshold(np.sort(cal[:, j]), alpha)
        flagged = decide_all(test[:, j], threshold)
        rows.append({"score": label(mode, f), "mode": mode, "top_fraction": f,
                     "image_auroc": auroc(labels, test[:, j]), "recall": float(flagged[labels].mean()),
                     "false_alarm_rate": float(flagged[~labels].mean()),
                     "best_recall_at_alpha": best_recall_at_far(labels, test[:, j], alpha)})
    return {"dataset": name, "canvas": det.config.preprocess.size, "normalize": det.config.scoring.normalize,
            "alpha": alpha, "n_calibration": len(cal), "n_good": int((~labels).sum()),
            "n_defective": int(labels.sum()), "rows": rows, "seconds": time.perf_counter() - t0}


def table(results: list[dict], accuracy: dict) -> str:
    out = [f"Machine: {machine()}; command: `python -m bench.top_fraction`; each set's default model "
           "(bench/work/accuracy_{set}.safetensors, as `python -m bench.accuracy` fits it), its calibration split "
           "and the full test split scored once; every image score recalibrated on the same calibration images at "
           "the card's alpha; normalisation as the fit chose it (with the default 1 %). 'best recall' is the best "
           "any threshold set with the test labels gets at the card's false-alarm rate: a bound, not a decision.",
           ""]
    out += ["| image score | " + " | ".join(r["dataset"] for r in results) + " | mean image AUROC | mean recall "
            "at alpha | mean false alarms on test/good | mean best recall at alpha |",
            "|---|" + "---|" * (len(results) + 4)]
    for j, (mode, f) in enumerate(SCORES):
        cells = [r["rows"][j] for r in results]
        out.append(f"| {label(mode, f)}{' (default)' if mode == 'top_mean' and f == 0.01 else ''} | "
                   + " | ".join(f"{c['image_auroc']:.3f} / {c['recall']:.3f} / {c['false_alarm_rate']:.3f}"
                                for c in cells)
                   + "".join(f" | {np.mean([c[k] for c in cells]):.3f}"
                             for k in ("image_auroc", "recall", "false_alarm_rate", "best_recall_at_alpha")) + " |")
    same = []
    for r in results:
        acc = accuracy.get(f"{r['dataset']}|{DEFAULT}", {}).get("image_auroc")
        ours = next(c["image_auroc"] for c in r["rows"] if c["mode"] == "top_mean" and c["top_fraction"] == 0.01)
        same.append(f"{r['dataset']} {'-' if acc is None else 'yes' if abs(acc - ours) < 1e-9 else f'no ({acc:.3f})'}")
    out += ["", "Cells: image AUROC / recall at alpha / false alarms on test/good. Per set: canvas, normalisation, "
            "alpha, calibration images: " + "; ".join(f"{r['dataset']} {r['canvas']} px, {r['normalize']}, "
                                                      f"{r['alpha']:.4g}, {r['n_calibration']}" for r in results)
            + ". The 1 % row equals bench.accuracy's default row: " + ", ".join(same) + ".", "",
            f"![image AUROC and recall by top fraction]({OUT.name}.png)", ""]
    return "\n".join(out)


def sweep_plot(path: Path, series: list[tuple[str, list[float], list[list[float]]]], titles: tuple[str, str],
               xlabel: str, default: float, xscale: str = "log", **scale: float) -> None:
    """Two panels of one sweep: `series` = (label, x values, [left panel's y values, right panel's]) per set; `xscale`
    and `scale`: the x axis's matplotlib scale and its options."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label_, xs, ys in series:
        for ax, y in zip(axes, ys, strict=True):
            if y:
                ax.plot(xs, y, marker="o", label=label_)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale(xscale, **scale)
        ax.axvline(default, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def per_set(json_path: Path, measure: Callable[[str], dict], complete: Callable[[dict], bool]) -> list[dict]:
    """`measure` on each of SETS, kept in `json_path` as each finishes; a set whose stored result is `complete`
    is not measured again (a rerun resumes). -> the results in SETS order."""
    done = {r["dataset"]: r for r in json.loads(json_path.read_text())["sets"]} if json_path.exists() else {}
    for name in SETS:
        if name in done and complete(done[name]):
            continue
        done[name] = measure(name)
        print(json.dumps({k: v for k, v in done[name].items() if k != "rows"}), flush=True)
        json_path.write_text(json.dumps({"machine": machine(), "sets": list(done.values())}, indent=2))
    return [done[n] for n in SETS]


def main() -> None:
    results = per_set(OUT.with_suffix(".json"), measure, lambda r: len(r["rows"]) == len(SCORES))
    accuracy = json.loads(RES.read_text()) if RES.exists() else {}
    text = table(results, accuracy.get("rows", accuracy))
    OUT.with_suffix(".md").write_text(text)
    sweep_plot(OUT.with_suffix(".png"),
               [(r["dataset"], list(FRACTIONS), [[c[k] for c in r["rows"] if c["mode"] == "top_mean"]
                                                 for k in ("image_auroc", "recall")]) for r in results],
               ("image AUROC", "recall at the card's alpha"),
               "top fraction of map pixels averaged (dotted: the default)", 0.01)
    print(text)


if __name__ == "__main__":
    main()
