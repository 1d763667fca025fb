"""Where do the false alarms on test/good come from? Calibration scores beside test/good scores, per part.

    python -m bench.far_groups [set ...]

The split-conformal threshold holds its alpha for new good images exchangeable with the calibration images.
On each fitted default model (bench/work/accuracy_<set>.safetensors, from `python -m bench.accuracy`) this
scores the calibration split the fit used and the set's test/good images, and reports the false-alarm rate,
the two score distributions (median, 99th percentile, two-sample Kolmogorov-Smirnov statistic) and, where the
set's file names name the physical part (GROUPS: deeppcb's first five digits are the board), the same per part.
A test/good part whose scores sit above its calibration images' is a new-part shift that no threshold set on
the training parts can cover at alpha. Backbone features come from the disk cache (bench/feature_cache.py).
Writes bench/results/far_groups.{json,md}.

    python -m bench.far_groups --small-train VARIANT [...] [set ...]

The same for bench.small_train's models on the sets cut to 90 good images (bench/work/small_train_<set>[_VARIANT]
.safetensors; `default` names the default's row, other names are bench.small_train's variants, each with its split
seed), plus where the calibration's top score sits: on so few calibration images the threshold is their largest
score, one image, and the same model on the set's train/good images the cut left out (good images of the
calibration's own source that nothing in the fit saw: do they alarm as test/good does?). Writes
bench/results/far_groups_small.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from bench.accuracy import DATASETS, RESULTS, WORK
from bench.feature_cache import cached_backbones
from bench.fit_eval import machine
from models.decision import false_alarm_bound, false_alarm_tail

GROUPS = {"deeppcb": r"^\d{5}", "magnetic_tile": r"^exp\d"}
"""Sets whose file names say which part (deeppcb: the board) or acquisition run (magnetic_tile: exp1-exp6) an image
shows (the regular expression's match is the group)."""


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two empirical distribution functions."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def summary(cal: np.ndarray, test: np.ndarray, threshold: float) -> dict:
    return {"n_cal": len(cal), "n_test_good": len(test), "false_alarms": int((test > threshold).sum()),
            "false_alarm_rate": float((test > threshold).mean()) if len(test) else None,
            "cal_median": float(np.median(cal)) if len(cal) else None,
            "test_median": float(np.median(test)) if len(test) else None,
            "cal_p99": float(np.quantile(cal, 0.99)) if len(cal) else None,
            "test_p99": float(np.quantile(test, 0.99)) if len(test) else None,
            "ks": ks_statistic(cal, test) if len(cal) and len(test) else None,
            # where test/good sits against the calibration's bulk (0.5 when exchangeable) and how far the top
            # calibration score, the threshold on few images, stands above that bulk
            "test_above_cal_median": float((test > np.median(cal)).mean()) if len(cal) and len(test) else None,
            "cal_max_over_median": float(cal.max() / np.median(cal)) if len(cal) else None}


def measure(name: str, model: Path | None = None, train: Path | None = None, seed: int = 0,
            groups: str | None = None) -> dict:
    """The set's fitted model (default: bench.accuracy's) against its calibration split (the split of the good
    images in `train` at `seed` and `groups`, as its fit made it) and the set's test/good; where `train` is a cut
    of the set's train/good, also against the train/good images the cut left out (`left_out`): good images of
    the calibration's own source that nothing in the fit saw."""
    import torch

    from models.detector import Detector
    from training.calibrate import CalibrationConfig, score_files, split_images
    from training.data import good_images

    torch.set_num_threads(2)
    data = DATASETS / name
    det = Detector.from_artifact(model or WORK / f"accuracy_{name}.safetensors", device="cpu")
    cal_cfg = CalibrationConfig(seed=seed, **({"groups": groups} if groups else {}))
    paths = good_images([train or data])
    split = split_images(paths, cal_cfg)
    test_paths = sorted((data / "test" / "good").iterdir())
    kept = {p.name for p in paths}
    rest = [p for p in good_images([data / "train" / "good"]) if p.name not in kept] if train else []
    with cached_backbones(WORK / "feature_cache"):
        cal_paths, cal, _ = score_files(det, split.calibrate, desc=f"{name} calibration")
        test_paths, test, _ = score_files(det, test_paths, desc=f"{name} test/good")
        _, left, _ = score_files(det, rest, desc=f"{name} train/good left out") if rest else (None, None, None)
    threshold = det.calibration.threshold
    out = {"dataset": name, "alpha": det.calibration.alpha, "threshold": threshold, **summary(cal, test, threshold)}
    if left is not None:
        out["left_out"] = summary(cal, left, threshold)
    if name in GROUPS:
        part = re.compile(GROUPS[name])
        cal_g = np.array([part.match(p.name).group(0) for p in cal_paths])
        test_g = np.array([part.match(p.name).group(0) for p in test_paths])
        out["parts"] = {g: summary(cal[cal_g == g], test[test_g == g], threshold) for g in sorted(set(test_g))}
    return out


def _f(v, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def ks_cell(s: dict) -> str:
    """KS statistic and, in brackets, the two-sample 5 % critical value for these counts
    (1.358 x sqrt((n + m) / (n m)), asymptotic): a statistic above it is unlikely by chance."""
    if s["ks"] is None:
        return "-"
    n, m = s["n_cal"], s["n_test_good"]
    return f"{s['ks']:.2f} ({1.358 * ((n + m) / (n * m)) ** 0.5:.2f})"


def tail_cell(k: int, m: int, n_cal: int, alpha: float) -> str:
    """P(at least k false alarms among m good images | exchangeable with the n_cal calibration images), exact
    (``models.decision.false_alarm_tail``); bold below 0.05: the guarantee did not hold for these images."""
    if m == 0:
        return "-"
    p = false_alarm_tail(k, m, n_cal, alpha)
    return f"**{p:.2g}**" if p < 0.05 else f"{p:.2g}"


def table(rows: dict) -> str:
    out = [f"Machine: {machine()}; command: `python -m bench.far_groups`. Each set's fitted default model "
           "(bench/work/accuracy_<set>.safetensors): the calibration split its fit used and test/good, scored by "
           "the same model. KS: two-sample Kolmogorov-Smirnov statistic between the two score distributions "
           "(0: same), in brackets the value it exceeds by chance 5 % of the time with these counts. P(>= k): how "
           "likely at least this many false alarms are if the test/good images were exchangeable with the "
           "calibration images (the guarantee's assumption; exact beta-binomial law of the conformal threshold, "
           "`models.decision.false_alarm_tail`); bold below 0.05.", "",
           "| set | alpha | n cal | n test/good | false alarms | rate | P(>= k) | median cal / test | p99 cal / test "
           "| KS |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        out.append(f"| {r['dataset']} | {r['alpha']:.3g} | {r['n_cal']} | {r['n_test_good']} | {r['false_alarms']} | "
                   f"{_f(r['false_alarm_rate'], '.3f')} | "
                   f"{tail_cell(r['false_alarms'], r['n_test_good'], r['n_cal'], r['alpha'])} | "
                   f"{_f(r['cal_median'])} / {_f(r['test_median'])} | "
                   f"{_f(r['cal_p99'])} / {_f(r['test_p99'])} | {ks_cell(r)} |")
    for r in rows.values():
        if "parts" not in r:
            continue
        out += ["", f"### {r['dataset']}, per part (file names `{GROUPS[r['dataset']]}`; threshold "
                f"{r['threshold']:.2f})", "",
                f"P(>= k) of each part against the whole calibration that set the threshold; {len(r['parts'])} "
                f"parts, so by chance one of them falls below {0.05 / len(r['parts']):.2g} 5 % of the time "
                "(Bonferroni).", "",
                "| part | n cal | n test/good | false alarms | P(>= k) | median cal / test | p99 cal / test | KS |",
                "|---|---|---|---|---|---|---|---|"]
        for g, s in r["parts"].items():  # the part's images against the whole calibration that set the threshold
            out.append(f"| {g} | {s['n_cal']} | {s['n_test_good']} | {s['false_alarms']} | "
                       f"{tail_cell(s['false_alarms'], s['n_test_good'], r['n_cal'], r['alpha'])} | "
                       f"{_f(s['cal_median'])} / "
                       f"{_f(s['test_median'])} | {_f(s['cal_p99'])} / {_f(s['test_p99'])} | {ks_cell(s)} |")
    return "\n".join(out) + "\n"


def small_table(rows: dict) -> str:
    """bench.small_train's models: one row per model, its calibration's groups beside its false alarms."""
    out = [f"Machine: {machine()}; command: `python -m bench.far_groups --small-train VARIANT ...`. "
           "bench.small_train's models (90 good images per set; bench/work/small_train_<set>[_variant]"
           ".safetensors), each against the calibration split its fit used and the set's test/good. "
           "test > cal median: share of test/good above the calibration's median (0.5 when exchangeable). "
           "cal max / median: the top calibration score, which is the threshold on so few images, over their "
           "median. Per group: false alarms on test/good / calibration images of that group; bound: the card's "
           "90 % bound on the count (`false_alarm_rate_90`). Left out: the set's train/good images outside the "
           "90-image cut, which nothing in the fit saw and which come from the calibration's own source; a rate "
           "there near alpha and a higher one on test/good point at test/good differing from train/good, not at "
           "the calibration.", "",
           "| set | model | seed | n cal | false alarms on test/good (bound) | P(>= k) | test > cal median "
           "| left out: n, false alarms (rate), > cal median | cal max / median "
           "| per group: false alarms / n cal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        bound = false_alarm_bound(r["n_cal"], r["alpha"]) * r["n_test_good"]
        groups = ", ".join(f"{g} {x['false_alarms']} / {x['n_cal']}" for g, x in r.get("parts", {}).items()) or "-"
        left = r.get("left_out")
        left_cell = (f"{left['n_test_good']}, {left['false_alarms']} ({left['false_alarm_rate']:.3f}), "
                     f"{left['test_above_cal_median']:.2f}" if left else "-")
        out.append(f"| {r['dataset']} | {r['variant']} | {r['seed']} | {r['n_cal']} | {r['false_alarms']} "
                   f"({bound:.0f}) | {tail_cell(r['false_alarms'], r['n_test_good'], r['n_cal'], r['alpha'])} | "
                   f"{_f(r['test_above_cal_median'])} | {left_cell} | {_f(r['cal_max_over_median'])} | {groups} |")
    return "\n".join(out) + "\n"


def measure_small(name: str, variant: str) -> dict:
    """A bench.small_train model (`default` or one of its variants) on its own calibration split."""
    from bench.anomalib_compare import subset
    from bench.small_train import IMAGES, VARIANTS

    cal_changes = {} if variant == "default" else VARIANTS[variant][3]
    seed = cal_changes.get("seed", 0)
    data = DATASETS / name  # bench.small_train's cut of train/good (symlinks), the same seeded sample
    train = subset(data, IMAGES / len(list((data / "train" / "good").iterdir())))
    model = WORK / f"small_train_{name}{'' if variant == 'default' else '_' + variant}.safetensors"
    return {**measure(name, model, train, seed, cal_changes.get("groups")), "variant": variant, "seed": seed}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("datasets", nargs="*", help="set names (default: every fitted set in bench/work)")
    p.add_argument("--small-train", nargs="+", metavar="VARIANT", default=[],
                   help="bench.small_train's models instead: `default` and/or its variant names")
    p.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json")
    a = p.parse_args()
    stem, render = ("far_groups_small", small_table) if a.small_train else ("far_groups", table)
    if a.table_only:
        rows = json.loads((RESULTS / f"{stem}.json").read_text())["rows"]
    elif a.small_train:
        names = a.datasets or sorted(GROUPS)
        rows = {f"{n}|{v}": measure_small(n, v) for n in names for v in a.small_train}
    else:
        names = a.datasets or sorted(d.name for d in DATASETS.iterdir()
                                     if (WORK / f"accuracy_{d.name}.safetensors").exists())
        rows = {n: measure(n) for n in names}
    if not a.table_only:
        (RESULTS / f"{stem}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    md = render(rows)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
