"""Would a per-model canvas size, chosen from good images, beat the one 384 px default?

Issue 20 asks for geometry chosen per model from good images, like the scoring choice. The scoring choice's
own signal is the AUROC of synthetic defects injected into held-out good selection images (training/select.py),
so the natural rule for the size is the same: fit at each candidate size, keep the one whose chosen scoring
separates the synthetic defects best. This benchmark evaluates that rule, and the most any per-model size choice
could gain (an oracle that knows the test split), from the fits `python -m bench.accuracy` already ran at 384 px
(variants context0_384 and its seeds 1/2, the default before it took learned context) and 256 px (variants
size256, size256_seed1, size256_seed2), both without context: the same data split,
the same selection rule with pose jitter, three seeds per set, 12 paired choices. It reads
bench/results/accuracy.json only (no torch) and writes bench/results/size_choice.{json,md}.

    python -m bench.size_choice
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.accuracy import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SOURCE = RESULTS / "accuracy.json"
# seed -> row method per candidate size: the context-0 fits (both sizes ran without learned context)
CANDIDATES = {seed: {384: f"variant: {VARIANTS[c384][0]}", 256: f"variant: {VARIANTS[c256][0]}"}
              for seed, (c384, c256) in enumerate([("context0_384", "size256"), ("context0_384_seed1", "size256_seed1"),
                                                   ("context0_384_seed2", "size256_seed2")])}


def selection_auroc(row: dict) -> float:
    """The synthetic-defect AUROC of the scoring the fit chose, on its held-out selection images."""
    return row["selection"][row["chosen"]]


def choices(rows: dict) -> list[dict]:
    out = []
    for dataset in sorted({r["dataset"] for r in rows.values()}):
        for seed, methods in CANDIDATES.items():
            cand = {size: rows.get(f"{dataset}|{m}") for size, m in methods.items()}
            if any(r is None or not r.get("selection") for r in cand.values()):
                continue
            sel = {size: selection_auroc(r) for size, r in cand.items()}
            test = {size: r["image_auroc"] for size, r in cand.items()}
            chosen = max(sel, key=sel.get)
            out.append({"dataset": dataset, "seed": seed, "selection_auroc": sel, "test_image_auroc": test,
                        "chosen": chosen, "best_on_test": max(test, key=test.get),
                        "chosen_minus_384": test[chosen] - test[384],
                        "oracle_minus_384": max(test.values()) - test[384]})
    return out


def table(rows: list[dict]) -> str:
    lines = ["Machine: none (reads bench/results/accuracy.json, written by `python -m bench.accuracy` and its size256 "
             "variants on x86_64, 2 CPU cores, CPU); command: `python -m bench.size_choice`.",
             "",
             "Rule: fit at 256 and 384 px, keep the size whose chosen scoring separates synthetic defects on the "
             "held-out selection images best (the scoring choice's own signal). Oracle: the size that is better on "
             "the test split.",
             "",
             "| set | fit seed | selection AUROC 256 / 384 | test image AUROC 256 / 384 | rule picks | better on test "
             "| rule minus 384 px | oracle minus 384 px |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, t = r["selection_auroc"], r["test_image_auroc"]
        lines.append(f"| {r['dataset']} | {r['seed']} | {s[256]:.3f} / {s[384]:.3f} | {t[256]:.3f} / {t[384]:.3f} | "
                     f"{r['chosen']} | {r['best_on_test']} | {r['chosen_minus_384']:+.3f} | "
                     f"{r['oracle_minus_384']:+.3f} |")
    if rows:
        rule, oracle = np.mean([r["chosen_minus_384"] for r in rows]), np.mean([r["oracle_minus_384"] for r in rows])
        agree = sum(r["chosen"] == r["best_on_test"] for r in rows)
        lines += ["", f"Over {len(rows)} fits: the rule picks 384 px {sum(r['chosen'] == 384 for r in rows)} times and "
                      f"the size better on test {agree} times; mean change of test image AUROC against 384 px "
                      f"(both without context): rule {rule:+.4f}, oracle {oracle:+.4f} (the most any per-model size "
                      f"choice between these two could gain, at twice the fit's SAE time)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = choices(json.loads(SOURCE.read_text())["rows"])
    (RESULTS / "size_choice.json").write_text(json.dumps({"source": str(SOURCE.relative_to(ROOT)), "rows": rows},
                                                         indent=2))
    md = table(rows)
    (RESULTS / "size_choice.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
