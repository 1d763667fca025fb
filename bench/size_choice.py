"""Would a per-model canvas size, chosen from good images, beat the one default size?

Issue 20 asks for geometry chosen per model from good images, like the scoring choice. The scoring choice's
own signal is the AUROC of synthetic defects injected into held-out good selection images (training/select.py),
so the natural rule for the size is the same: fit at each candidate size, keep the one whose chosen scoring
separates the synthetic defects best. This benchmark evaluates that rule, and the most any per-model size choice
could gain (an oracle that knows the test split), from fits `python -m bench.accuracy` already ran, for one pair
of sizes: 256 against 384 px (variants size256* and context0_384*, both without context; the choice the 384 px
default faced) or 384 against 512 px (variants context7_384* and size512*, both with learned context 7; the
choice the 512 px default faces). The same data split, the same selection rule with pose jitter, three seeds per
set, 12 paired choices. It reads bench/results/accuracy.json only (no torch) and writes
bench/results/size_choice.{json,md} (256 / 384) or size_choice_512.{json,md} (384 / 512).

    python -m bench.size_choice                  # 256 against 384 px
    python -m bench.size_choice --pair 384,512
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.accuracy import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SOURCE = RESULTS / "accuracy.json"
PAIRS = {(256, 384): ("size_choice", "both without context",
                      [("size256", "context0_384"), ("size256_seed1", "context0_384_seed1"),
                       ("size256_seed2", "context0_384_seed2")]),
         (384, 512): ("size_choice_512", "both with learned context 7",
                      [("context7_384", "size512"), ("context7_384_seed1", "size512_seed1"),
                       ("context7_384_seed2", "size512_seed2")])}
"""(smaller, larger size) -> (results file name, what the fits share, per seed the variants at each size)."""


def candidates(pair: tuple[int, int]) -> dict[int, dict[int, str]]:
    """seed -> row method per candidate size."""
    return {seed: {size: f"variant: {VARIANTS[v][0]}" for size, v in zip(pair, names, strict=True)}
            for seed, names in enumerate(PAIRS[pair][2])}


def selection_auroc(row: dict) -> float:
    """The synthetic-defect AUROC of the scoring the fit chose, on its held-out selection images."""
    return row["selection"][row["chosen"]]


def choices(rows: dict, pair: tuple[int, int] = (256, 384)) -> list[dict]:
    """One row per (set, seed) with both sizes fitted: each size's selection and test AUROC, the rule's pick and
    the better size on test; gains are against the larger size (the default of the pair)."""
    base = pair[1]
    out = []
    for dataset in sorted({r["dataset"] for r in rows.values()}):
        for seed, methods in candidates(pair).items():
            cand = {size: rows.get(f"{dataset}|{m}") for size, m in methods.items()}
            if any(r is None or not r.get("selection") for r in cand.values()):
                continue
            sel = {size: selection_auroc(r) for size, r in cand.items()}
            test = {size: r["image_auroc"] for size, r in cand.items()}
            chosen = max(sel, key=sel.get)
            out.append({"dataset": dataset, "seed": seed, "selection_auroc": sel, "test_image_auroc": test,
                        "chosen": chosen, "best_on_test": max(test, key=test.get),
                        "chosen_minus_base": test[chosen] - test[base],
                        "oracle_minus_base": max(test.values()) - test[base]})
    return out


def table(rows: list[dict], pair: tuple[int, int] = (256, 384)) -> str:
    (small, large), shared = pair, PAIRS[pair][1]
    lines = [f"Machine: none (reads bench/results/accuracy.json, written by `python -m bench.accuracy` and its "
             f"variants on x86_64, 2 CPU cores, CPU); command: `python -m bench.size_choice --pair {small},{large}`.",
             "",
             f"Rule: fit at {small} and {large} px, keep the size whose chosen scoring separates synthetic defects on "
             "the held-out selection images best (the scoring choice's own signal). Oracle: the size that is better "
             "on the test split.",
             "",
             f"| set | fit seed | selection AUROC {small} / {large} | test image AUROC {small} / {large} | rule picks "
             f"| better on test | rule minus {large} px | oracle minus {large} px |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, t = r["selection_auroc"], r["test_image_auroc"]
        lines.append(f"| {r['dataset']} | {r['seed']} | {s[small]:.3f} / {s[large]:.3f} | {t[small]:.3f} / "
                     f"{t[large]:.3f} | {r['chosen']} | {r['best_on_test']} | {r['chosen_minus_base']:+.3f} | "
                     f"{r['oracle_minus_base']:+.3f} |")
    if rows:
        rule, oracle = np.mean([r["chosen_minus_base"] for r in rows]), np.mean([r["oracle_minus_base"] for r in rows])
        agree = sum(r["chosen"] == r["best_on_test"] for r in rows)
        lines += ["", f"Over {len(rows)} fits: the rule picks {large} px {sum(r['chosen'] == large for r in rows)} "
                      f"times and the size better on test {agree} times; mean change of test image AUROC against "
                      f"{large} px ({shared}): rule {rule:+.4f}, oracle {oracle:+.4f} (the most any per-model size "
                      f"choice between these two could gain, at twice the fit's SAE time)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pair", default="256,384", choices=[f"{a},{b}" for a, b in PAIRS])
    pair = tuple(int(x) for x in p.parse_args().pair.split(","))
    rows = choices(json.loads(SOURCE.read_text())["rows"], pair)
    name = PAIRS[pair][0]
    (RESULTS / f"{name}.json").write_text(json.dumps({"source": str(SOURCE.relative_to(ROOT)), "rows": rows},
                                                     indent=2))
    md = table(rows, pair)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
