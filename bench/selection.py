"""Does the scoring choice generalise? On every shared category: one SAE fitted on the fit split, then

* the **old** choice (first versions): synthetic defects on 48 *fit* images, best AUROC wins;
* the **new** choice (``training.select``): synthetic defects on the held-out selection split, the
  simplest score kept unless another's lead is significant (one-sided 95 % paired bootstrap);
* the truth: image AUROC of every candidate on the real test split, each calibrated on the same
  calibration split, with its false-alarm rate on test/good at alpha = 0.01 (and 1/(n+1) where the
  calibration set is smaller than that needs).

    python -m bench.selection            # every category (resumes: rows cached per category)
    python -m bench.selection --repair 0.5   # the same with a repair-trained SAE (rows "<category>/repair=0.5")
    python -m bench.selection --table-only

Writes bench/results/selection.{json,md}. One torch job, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "results"
RES = OUT / "selection.json"


def run(data: Path, repair: float = 0.0) -> dict:
    import torch

    from models.config import NORMALIZE_CHOICES, ModelConfig
    from training.calibrate import CalibrationConfig, calibrate, split_images
    from training.data import good_images
    from training.evaluate import evaluate
    from training.fit import FitConfig, fit_detector
    from training.select import select_normalization

    torch.set_num_threads(2)
    cal_cfg = CalibrationConfig()
    split = split_images(good_images([data]), cal_cfg)
    t0 = time.perf_counter()
    det = fit_detector(split.fit, ModelConfig(), FitConfig(repair=repair), torch.device("cpu"))
    fit_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    in_sample = [split.fit[i] for i in rng.permutation(len(split.fit))[:len(split.select)]]
    old_choice, old_table = select_normalization(det, in_sample, seed=0, copies=1, n_boot=2)
    old_table = old_table["auroc_on_synthetic_defects"]
    old_choice = max(NORMALIZE_CHOICES, key=lambda c: old_table[c])  # the old rule: best AUROC wins
    new_choice, new_table = select_normalization(det, split.select, seed=0)
    truth = {}
    for cand in NORMALIZE_CHOICES:
        d = det.with_scoring(normalize=cand)
        d = d.replace(calibration=calibrate(d, split.calibrate, cal_cfg))
        m, _ = evaluate(d, data)
        truth[cand] = {"image_auroc": m["image_auroc"], "pixel_auroc": m.get("pixel_auroc"), "aupro": m.get("aupro_30"),
                       "false_alarm_rate": m["false_alarm_rate"], "recall": m["recall"],
                       "alpha_guaranteed": d.calibration.alpha}
    best = max(NORMALIZE_CHOICES, key=lambda c: truth[c]["image_auroc"])
    return {"dataset": data.name, "sae": f"repair={repair}" if repair else "copy",
            "n_fit": len(split.fit), "n_select": len(split.select),
            "n_calibrate": len(split.calibrate), "fit_seconds": fit_s,
            "old": {"choice": old_choice, "auroc_on_synthetic": old_table},
            "new": {"choice": new_choice, "auroc_on_synthetic": new_table["auroc_on_synthetic_defects"],
                    "lead_lower_bound_95": new_table["lead_lower_bound_95"]},
            "test": truth, "best_in_hindsight": best}


def table(rows: dict) -> str:
    cands = ("none", "position", "position_novelty")
    out = [f"Machine: {machine()}; command: `python -m bench.selection`. One SAE per category (default config, "
           "fit split); each candidate scoring calibrated on the same calibration split and evaluated on the "
           "full test split.\n",
           "| category | old choice (48 fit images) | new choice (held-out, bootstrap) | test image AUROC "
           "none / position / position_novelty | AUROC of old -> new choice | best in hindsight |",
           "|---|---|---|---|---|---|"]
    gains = []
    for r in rows.values():
        t = r["test"]
        o, n = r["old"], r["new"]
        old_s = ", ".join(f"{c} {o['auroc_on_synthetic'][c]:.3f}" for c in cands)
        new_s = ", ".join(f"{c} {n['auroc_on_synthetic'][c]:.3f}" + (
            f" (lead >= {n['lead_lower_bound_95'][c]:+.3f})" if c in n["lead_lower_bound_95"] else "") for c in cands)
        aucs = " / ".join(f"{t[c]['image_auroc']:.3f}" for c in cands)
        a_old, a_new = t[o["choice"]]["image_auroc"], t[n["choice"]]["image_auroc"]
        gains.append((a_old, a_new))
        out.append(f"| {r['dataset']} ({r.get('sae', 'copy')} SAE) "
                   f"| **{o['choice']}** ({old_s}) | **{n['choice']}** ({new_s}) | {aucs} | "
                   f"{a_old:.3f} -> {a_new:.3f} | {r['best_in_hindsight']} |")
    for sae in sorted({r.get("sae", "copy") for r in rows.values()}):
        g = [gain for gain, r in zip(gains, rows.values(), strict=True) if r.get("sae", "copy") == sae]
        out.append(f"| **mean, {sae} SAE ({len(g)} sets)** | | | | **{np.mean([x[0] for x in g]):.3f} -> "
                   f"{np.mean([x[1] for x in g]):.3f}** | |")
    out.append("\nFalse alarms on test/good at the calibrated alpha (target 0.01; `alpha` = what the calibration "
               "guarantees):\n")
    out.append("| category | calibration images | alpha guaranteed | false-alarm rate none / position / "
               "position_novelty |")
    out.append("|---|---|---|---|")
    for r in rows.values():
        t = r["test"]
        out.append(f"| {r['dataset']} ({r.get('sae', 'copy')} SAE) | {r['n_calibrate']} | "
                   f"{t['none']['alpha_guaranteed']:.4f} | "
                   + " / ".join(f"{t[c]['false_alarm_rate']:.3f}" for c in cands) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="*", default=None)
    p.add_argument("--repair", type=float, default=0.0, help="repair share of the SAE's training batches")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    rows = json.loads(RES.read_text()) if RES.exists() else {}
    if not a.table_only:
        for d in sorted(DATASETS.iterdir()) if a.datasets is None else [DATASETS / x for x in a.datasets]:
            key = d.name + (f"/repair={a.repair}" if a.repair else "")
            if d.is_dir() and key not in rows:
                print(f"[run] {key}", flush=True)
                rows[key] = run(d, a.repair)
                RES.write_text(json.dumps(rows, indent=2))
    (OUT / "selection.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
