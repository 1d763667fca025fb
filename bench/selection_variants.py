"""How fragile is the scoring choice? The fit's choice re-run on each shared set's own selection split
with other settings: defects per image (2, the default, or 3), placement (``uniform``, the default, or
``on_part``: centres drawn by local texture, away from empty backdrop), and the pose jitter of the
moved good copy (1 % of the long side, the default; 0 = none, the rule before it; or 2 %).

    python -m bench.selection_variants     # needs bench/work/accuracy_<set>.safetensors (python -m bench.accuracy)

Writes bench/results/selection_variants.{json,md}. The truth to compare with is the test-split AUROC of
each candidate in bench/results/accuracy.md (ablation rows).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "results"
SETTINGS = [("uniform", 2, 0.0), ("uniform", 2, 0.01), ("uniform", 2, 0.02), ("uniform", 3, 0.0),
            ("uniform", 3, 0.01), ("on_part", 2, 0.0), ("on_part", 2, 0.01), ("on_part", 3, 0.0), ("on_part", 3, 0.01)]


def main() -> None:
    import torch

    from models.detector import Detector
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images
    from training.select import select_normalization

    torch.set_num_threads(2)
    rows = []
    for model in sorted((ROOT / "bench" / "work").glob("accuracy_*.safetensors")):
        name = model.stem.removeprefix("accuracy_")
        det = Detector.from_artifact(model, "cpu")
        select = split_images(good_images([DATASETS / name]), CalibrationConfig()).select
        for placement, copies, jitter in SETTINGS:
            choice, table = select_normalization(det, select, copies=copies, placement=placement, jitter=jitter)
            rows.append({"dataset": name, "placement": placement, "copies": copies, "jitter": jitter, "choice": choice,
                         "auroc": table["auroc_on_synthetic_defects"], "lead_low": table["lead_lower_bound_95"]})
            print(rows[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "selection_variants.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"Machine: {machine()}; command: `python -m bench.selection_variants`; the models of "
             "`python -m bench.accuracy`, each on its own selection split (default groups).", "",
             "| set | placement | defects per image | pose jitter | choice | AUROC on synthetic defects (95 % lower "
             "bound of the lead over none) |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = ", ".join(f"{k} {v:.3f}" + (f" ({r['lead_low'][k]:+.3f})" if k in r["lead_low"] else "")
                          for k, v in r["auroc"].items())
        lines.append(f"| {r['dataset']} | {r['placement']} | {r['copies']} | {r['jitter']:.0%} | {r['choice']} | "
                     f"{cells} |")
    (OUT / "selection_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
