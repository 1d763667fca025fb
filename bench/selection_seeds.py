"""How often does the scoring choice flip with the draw of its synthetic defects? Fitted models, each on its own
selection split, the choice rerun with several selection seeds and defects per image.

    python -m bench.selection_seeds                     # the 384 px default's three fit seeds and the expansion-16 ones
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

from bench.accuracy import DATASETS, DEFAULT, RES, RESULTS, SCORING_ROWS, SEED_FAMILIES, VARIANTS, model_path
from bench.fit_eval import machine

FAMILIES = {"default": "384 px, context 7 (the default until 2026-12-04)",
            "expansion 16": "context 7, SAE expansion 16"}
"""Row label -> the fit family of bench/accuracy.py (SEED_FAMILIES) whose three seeds are rerun. Both ran when the
default canvas was 384 px: 'default' is that default (its seed-0 row the variant `context7_384`, the same fit)."""
MODELS = {f"{label}, fit seed {seed}": name for label, family in FAMILIES.items()
          for seed, name in SEED_FAMILIES[family].items()}
"""Row name -> the DEFAULT method or a variant name of bench/accuracy.py."""


def truth(rows: dict, dataset: str, name: str) -> dict:
    """Test image AUROC of each scoring for that fit, from bench/results/accuracy.json's `rows`."""
    if name == DEFAULT:
        return {c: rows.get(f"{dataset}|ablation: {lab}", {}).get("image_auroc") for c, lab in SCORING_ROWS.items()}
    return rows.get(f"{dataset}|variant: {VARIANTS[name][0]}", {}).get("test_auroc_by_scoring") or {}


def main() -> None:
    import torch

    from models.detector import Detector
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images
    from training.select import select_normalization

    p = argparse.ArgumentParser()
    p.add_argument("--sets", default="bsdata_pitting,deeppcb,magnetic_tile,tire")
    p.add_argument("--copies", default="2,3",
                   help="defects per selection image to compare (a fit uses 3; 2 until 2026-12-04)")
    p.add_argument("--seeds", default="0,1,2", help="selection seeds (the fit uses its own seed)")
    a = p.parse_args()
    torch.set_num_threads(2)
    out = RESULTS / "selection_seeds.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else {}
    accuracy = json.loads(RES.read_text())["rows"]  # each fit's test AUROC by scoring, read once
    for name in a.sets.split(","):
        select = split_images(good_images([DATASETS / name]), CalibrationConfig()).select  # where it was fitted
        for label, fit in MODELS.items():
            path = model_path(fit, name)
            todo = [(c, sd) for c in map(int, a.copies.split(",")) for sd in map(int, a.seeds.split(","))
                    if f"{name}|{label}|{c}|{sd}" not in rows]
            if not todo or not path.exists():
                continue
            det = Detector.from_artifact(path, "cpu")
            for copies, seed in todo:
                key = f"{name}|{label}|{copies}|{seed}"
                choice, table = select_normalization(det, select, seed=seed, copies=copies)  # no feature cache:
                # its defect and moved copies are new pixels every draw (the cache would only grow)
                rows[key] = {"dataset": name, "model": label, "copies": copies, "seed": seed, "choice": choice,
                             "lead_low": table["lead_lower_bound_95"], "truth": truth(accuracy, name, fit)}
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
