"""Does a per-position z-score with a shrunk standard deviation stop failing on free-pose parts?

    python -m bench.position_std [set ...]

The `position` score divides each patch's error by the spread of good patches at the same grid
position; where that spread is small (tyre treads photographed in new poses), new good parts score
high (tire: false alarms 0.84 on test/good at alpha 0.01). On each fitted default model
(bench/work/accuracy_<set>.safetensors, from `python -m bench.accuracy`) this rescores the shared
sets' test splits with the same SAE and these per-position statistics: as fitted, the spread floored
at 0.5 x or 1 x the median position's, sqrt(own^2 + median^2), one global spread (mean only), mean
and spread each replaced by their maximum over the 3 x 3 or 5 x 5 cells around a position
(tolerance to a small pose change), and a one-sided version (mean and spread floored at their
medians: only noisy positions are discounted);
each recalibrated on the calibration split. Backbone features come from the disk cache
(bench/feature_cache.py). Writes bench/results/position_std.{json,md}.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.accuracy import DATASETS, RESULTS, WORK, _metrics, recalibrated
from bench.feature_cache import cached_backbones
from bench.fit_eval import machine


def neighbourhood_max(grid: torch.Tensor, size: int) -> torch.Tensor:
    """(h, w) per-position statistic -> its maximum over the size x size cells around each position."""
    return torch.nn.functional.max_pool2d(grid[None, None], size, 1, size // 2)[0, 0]


def main() -> None:
    from models.detector import Detector
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images

    p = argparse.ArgumentParser()
    p.add_argument("sets", nargs="*", default=["bsdata_pitting", "deeppcb", "magnetic_tile", "tire"])
    a = p.parse_args()
    torch.set_num_threads(2)
    rows = {}
    for name in a.sets:
        data = DATASETS / name
        det = Detector.from_artifact(WORK / f"accuracy_{name}.safetensors", "cpu")
        s = det.score_stats
        med = s.err_std.median()
        spread = (s.err_std.pow(2).mean() + s.err_mean.var()).sqrt()
        variants = {"position (as fitted)": s,
                    "spread floored at 0.5 x median": s._replace(err_std=s.err_std.clamp_min(0.5 * med)),
                    "spread floored at 1 x median": s._replace(err_std=s.err_std.clamp_min(med)),
                    "sqrt(spread^2 + median^2)": s._replace(err_std=(s.err_std.pow(2) + med**2).sqrt()),
                    "one global spread (mean only)": s._replace(err_std=torch.full_like(s.err_std, float(spread))),
                    **{f"mean and spread: max over {c} x {c} cells": s._replace(
                        err_mean=neighbourhood_max(s.err_mean, c), err_std=neighbourhood_max(s.err_std, c))
                       for c in (3, 5)},
                    "one-sided: mean and spread floored at their medians": s._replace(
                        err_mean=s.err_mean.clamp_min(s.err_mean.median()), err_std=s.err_std.clamp_min(med))}
        cal_paths = split_images(good_images([data]), CalibrationConfig()).calibrate
        with cached_backbones(WORK / "feature_cache"):
            raw = recalibrated(det.with_scoring(normalize="none"), cal_paths)
            rows[f"{name}|raw error (none)"] = _metrics(raw, data)
            for label, stats in variants.items():
                d = det.with_scoring(normalize="position").replace(score_stats=stats)
                rows[f"{name}|{label}"] = _metrics(recalibrated(d, cal_paths), data)
                print(name, label, round(rows[f"{name}|{label}"]["image_auroc"], 3), flush=True)
    (RESULTS / "position_std.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    labels = list(dict.fromkeys(k.split("|", 1)[1] for k in rows))
    lines = [f"Machine: {machine()}; command: `python -m bench.position_std`; default models of "
             "`python -m bench.accuracy`, recalibrated per row (alpha 0.01)", "",
             "image AUROC / AUPRO@30% / false alarms on test/good", "",
             "| score | " + " | ".join(a.sets) + " | mean image AUROC |", "|---" * (len(a.sets) + 2) + "|"]
    for label in labels:
        cells = [rows[f"{n}|{label}"] for n in a.sets]
        lines.append(f"| {label} | " + " | ".join(
            f"{c['image_auroc']:.3f} / {c['aupro_30'] if c['aupro_30'] is None else round(c['aupro_30'], 3)} / "
            f"{c['false_alarm_rate']:.3f}" for c in cells)
            + f" | {sum(c['image_auroc'] for c in cells) / len(cells):.3f} |")
    (RESULTS / "position_std.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
