"""How often does the scoring choice flip with the draw of its synthetic defects? Fitted models, each on its own
selection split, the choice rerun with several selection seeds and defects per image.

    python -m bench.selection_seeds                     # the default's three fit seeds and the expansion-16 ones
    python -m bench.selection_seeds --copies 2,3,4 --seeds 0,1,2 --sets magnetic_tile,tire

A fit makes its choice once, with its own seed (``training/select.py``: a candidate replaces the raw error only
for a significant lead on synthetic defects). A model whose choice flips between draws is a fit whose result
depends on luck; more defects per image cost selection time and should make the choice steadier. The truth to
compare with is each model's test AUROC by scoring (bench/results/accuracy.json, ``test_auroc_by_scoring``).
Needs the models of `python -m bench.accuracy` (bench/work). Writes bench/results/selection_seeds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from bench.accuracy import DATASETS, RES, RESULTS, SCORING_ROWS, VARIANTS, WORK
from bench.fit_eval import machine

MODELS = {"default, fit seed 0": "accuracy_{set}", "default, fit seed 1": "variant_{set}_context7_384_seed1",
          "default, fit seed 2": "variant_{set}_context7_384_seed2", "expansion 16, fit seed 0":
          "variant_{set}_expansion16", "expansion 16, fit seed 1": "variant_{set}_expansion16_seed1",
          "expansion 16, fit seed 2": "variant_{set}_expansion16_seed2"}
"""Row name -> model file in bench/work (without .safetensors)."""


def truth(name: str, model: str) -> dict:
    """Test image AUROC of each scoring for this model, from bench/results/accuracy.json."""
    rows = json.loads(RES.read_text())["rows"]
    if model.startswith("accuracy_"):
        return {c: rows.get(f"{name}|ablation: {lab}", {}).get("image_auroc") for c, lab in SCORING_ROWS.items()}
    variant = model.removeprefix(f"variant_{name}_")
    return rows.get(f"{name}|variant: {VARIANTS[variant][0]}", {}).get("test_auroc_by_scoring") or {}


def main() -> None:
    import torch

    from models.detector import Detector
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images
    from training.select import select_normalization

    p = argparse.ArgumentParser()
    p.add_argument("--sets", default="bsdata_pitting,deeppcb,magnetic_tile,tire")
    p.add_argument("--copies", default="2,3", help="defects per selection image to compare (fit default: 2)")
    p.add_argument("--seeds", default="0,1,2", help="selection seeds (the fit uses its own seed)")
    a = p.parse_args()
    torch.set_num_threads(2)
    out = RESULTS / "selection_seeds.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else {}
    for name in a.sets.split(","):
        select = split_images(good_images([DATASETS / name]), CalibrationConfig()).select
        for label, pattern in MODELS.items():
            path = WORK / f"{pattern.format(set=name)}.safetensors"
            if not path.exists():
                continue
            det = Detector.from_artifact(path, "cpu")
            for copies in map(int, a.copies.split(",")):
                for seed in map(int, a.seeds.split(",")):
                    key = f"{name}|{label}|{copies}|{seed}"
                    if key in rows:
                        continue
                    choice, table = select_normalization(det, select, seed=seed, copies=copies)  # no feature cache:
                    # its defect and moved copies are new pixels every draw (the cache would only grow)
                    rows[key] = {"dataset": name, "model": label, "copies": copies, "seed": seed, "choice": choice,
                                 "lead_low": table["lead_lower_bound_95"], "truth": truth(name, path.stem)}
                    print(key, choice, {k: round(v, 3) for k, v in rows[key]["lead_low"].items()}, flush=True)
                    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"Machine: {machine()}; command: `python -m bench.selection_seeds` (the rows of every run are kept; "
             "the counts say how many seeds each ran)."
             " Each fitted model on its own selection split; the choice rerun per selection seed. Truth: the model's "
             "test image AUROC with each scoring (none / position / position_novelty).", "",
             "| set | model | defects per image | choices over the seeds | test AUROC none / position / "
             "position_novelty | mean test AUROC of the choices |", "|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for r in rows.values():
        groups.setdefault((r["dataset"], r["model"], r["copies"]), []).append(r)
    for (name, model, copies), rs in sorted(groups.items()):
        t = rs[0]["truth"]
        got = [t.get(r["choice"]) for r in rs if t.get(r["choice"]) is not None]
        counts = ", ".join(f"{c} x{n}" for c, n in Counter(r["choice"] for r in rs).most_common())
        tt = " / ".join("-" if t.get(c) is None else f"{t[c]:.3f}" for c in ("none", "position", "position_novelty"))
        mean = f"{sum(got) / len(got):.3f}" if got else "-"
        lines.append(f"| {name} | {model} | {copies} | {counts} | {tt} | {mean} |")
    (RESULTS / "selection_seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
