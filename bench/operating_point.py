"""Where the calibrated threshold lands on each shared set, against the best any threshold could do there.

For the default model of each set (the fit `python -m bench.accuracy` saved as
bench/work/accuracy_{set}.safetensors), the test split is scored once and three things are set side by side:

* the model's own decision (its split-conformal threshold, set from good images alone): recall and the
  false-alarm rate on test/good;
* the best recall of any threshold on the same labelled test images that flags at most alpha (the card's)
  of its good images, and at most twice alpha (`training.metrics.best_recall_at_far`);
* the largest good calibration scores, which set the threshold when the calibration is small.

Where the model's recall is short of the best at alpha, a threshold from more good images could close the
gap; where the best itself is short of a target, no threshold can: only a better score. A plot shows
each set's ROC at low false-alarm rates with the model's operating point.

    python -m bench.operating_point     # ~12 min on 2 cores; writes bench/results/operating_point.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import time

from bench.accuracy import DATASETS, DEFAULT, RES, RESULTS, WORK
from bench.fit_eval import machine

SETS = ("bsdata_pitting", "deeppcb", "magnetic_tile", "tire")
OUT = RESULTS / "operating_point"


def measure(name: str) -> dict:
    import torch

    from models.detector import Detector
    from training.evaluate import evaluate
    from training.metrics import roc_curve

    torch.set_num_threads(2)
    path = WORK / f"accuracy_{name}.safetensors"
    if not path.exists():
        raise SystemExit(f"{path}: missing; run `python -m bench.accuracy ../shared/datasets/{name}` first")
    det = Detector.from_artifact(path, "cpu")
    t0 = time.perf_counter()
    m, d = evaluate(det, DATASETS / name)
    fpr, tpr = roc_curve(d["labels"], d["scores"])
    cal = det.calibration
    top = sorted(cal.scores, reverse=True)[:3]
    return {"dataset": name, "canvas": det.config.preprocess.size, "n_calibration": len(cal.scores),
            "alpha": cal.alpha, "requested_alpha": cal.requested_alpha, "threshold": cal.threshold,
            "calibration_top3": top, "n_good": int((~d["labels"]).sum()), "n_defective": int(d["labels"].sum()),
            **{k: m[k] for k in ("image_auroc", "recall", "false_alarm_rate", "best_recall_at_alpha",
                                 "best_recall_at_2alpha")},
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "seconds": time.perf_counter() - t0}


def table(rows: list[dict], accuracy: dict) -> str:
    out = [f"Machine: {machine()}; command: `python -m bench.operating_point`; each set's default model as "
           "`python -m bench.accuracy` fitted it (bench/work/accuracy_{set}.safetensors), full test split. "
           "alpha is the model card's (the requested 0.01, or 1/(n+1) where n calibration images cannot "
           "support it). 'best recall' is that of the best threshold chosen with the test labels in hand that "
           "flags at most that share of test/good: a bound on what any threshold gets at that false-alarm rate "
           "on these images, not something a model fitted on good images can be tuned to.", "",
           "| set | canvas | calibration images | alpha (card) | threshold: recall | threshold: false alarms "
           "on test/good | best recall, false alarms <= alpha | best recall, <= 2 alpha | largest calibration "
           "scores (threshold first) | image AUROC | same AUROC as bench.accuracy's default row |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = accuracy.get(f"{r['dataset']}|{DEFAULT}", {}).get("image_auroc")
        same = "-" if acc is None else ("yes" if abs(acc - r["image_auroc"]) < 1e-9 else f"no ({acc:.3f})")
        out.append(f"| {r['dataset']} | {r['canvas']} | {r['n_calibration']} | {r['alpha']:.4g} | "
                   f"{r['recall']:.3f} | {r['false_alarm_rate']:.3f} ({round(r['false_alarm_rate'] * r['n_good'])} "
                   f"of {r['n_good']}) | {r['best_recall_at_alpha']:.3f} | {r['best_recall_at_2alpha']:.3f} | "
                   f"{', '.join(f'{s:.3g}' for s in r['calibration_top3'])} | {r['image_auroc']:.3f} | {same} |")
    out += ["", f"![ROC at low false-alarm rates]({OUT.name}.png)", ""]
    return "\n".join(out)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        ax.step(r["roc"]["fpr"], r["roc"]["tpr"], where="post", label="ROC on the test split")
        ax.plot([r["false_alarm_rate"]], [r["recall"]], "ro", label="the model's threshold")
        for x, ls in ((r["alpha"], ":"), (2 * r["alpha"], "--")):
            ax.axvline(x, color="grey", ls=ls, lw=1)
        ax.set(xlim=(0, max(0.1, 1.5 * r["false_alarm_rate"])), ylim=(0, 1), xlabel="false-alarm rate",
               title=f"{r['dataset']} (alpha {r['alpha']:.3g}: dotted, 2 alpha: dashed)")
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("recall")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sets", nargs="*", default=list(SETS), help="shared sets (default: all four)")
    p.add_argument("--fresh", action="store_true", help="measure again the sets already in the results file")
    a = p.parse_args()
    from models.artifact import atomic_write_bytes

    res = OUT.with_suffix(".json")
    done = {r["dataset"]: r for r in json.loads(res.read_text())["rows"]} if res.exists() else {}
    for name in a.sets:
        if name in done and not a.fresh:
            continue
        done[name] = measure(name)
        print(f"{name}: recall {done[name]['recall']:.3f}, best at alpha {done[name]['best_recall_at_alpha']:.3f}",
              flush=True)
        atomic_write_bytes(res, json.dumps({"machine": machine(), "rows": list(done.values())}, indent=1).encode())
    rows = [done[s] for s in sorted(done)]
    accuracy = json.loads(RES.read_text())["rows"] if RES.exists() else {}
    atomic_write_bytes(OUT.with_suffix(".md"), table(rows, accuracy).encode())
    plot(rows)


if __name__ == "__main__":
    main()
