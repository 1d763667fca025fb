"""Does a per-position z-score with a shrunk standard deviation stop failing on free-pose parts?

    python -m bench.position_std [set ...]

The `position` score divides each patch's error by the spread of good patches at the same grid
position; where that spread is small (tyre treads photographed in new poses), new good parts score
high (tire: false alarms 0.84 on test/good at alpha 0.01). On each fitted default model
(bench/work/accuracy_<set>.safetensors, from `python -m bench.accuracy`) this rescores the shared
sets' test splits with the same SAE and per-position means and four spreads: as fitted, floored at
0.5 x or 1 x the median position's, sqrt(own^2 + median^2), and one global spread (mean only);
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
        variants = {"position (as fitted)": s.err_std,
                    "spread floored at 0.5 x median": s.err_std.clamp_min(0.5 * med),
                    "spread floored at 1 x median": s.err_std.clamp_min(med),
                    "sqrt(spread^2 + median^2)": (s.err_std.pow(2) + med**2).sqrt(),
                    "one global spread (mean only)": torch.full_like(s.err_std, float(spread))}
        cal_paths = split_images(good_images([data]), CalibrationConfig()).calibrate
        with cached_backbones(WORK / "feature_cache"):
            raw = recalibrated(det.with_scoring(normalize="none"), cal_paths)
            rows[f"{name}|raw error (none)"] = _metrics(raw, data)
            for label, std in variants.items():
                d = det.with_scoring(normalize="position").replace(score_stats=s._replace(err_std=std))
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
