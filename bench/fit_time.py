"""Fit time beside anomalib PaDiM's, per shared set, on one machine in one run.

    python -m bench.fit_time                 # every category in ../shared/datasets
    python -m bench.fit_time ../shared/datasets/tire

For each set, one after the other: our fit as a user runs it (`sae-inspect fit DATA --out M`: the whole process,
defaults, the validated ONNX export written beside the artifact), then anomalib PaDiM's `Engine.fit` at 256 px
(its first runs' size), 384 px (our canvas until 2026-12-04), 512 px (ours that day) and 640 px (the largest side
our canvas rule takes since), same backbone (the worker of bench/anomalib_worker.py, no evaluation). Our time is
the command's wall clock (Python start, imports and the export included); PaDiM's is `Engine.fit` alone (its
process start and imports excluded), so the ratio leans against us. Our fit's own phases come from the artifact's
`fit_profile_s`. Writes bench/results/fit_time.{json,md} and fit_time.png. Run it on a quiet machine: one process
at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.anomalib_compare import WorkerFailed, ensure_anomalib, run_row
from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
WORK = ROOT / "bench" / "work" / "fit_time"
RESULTS = ROOT / "bench" / "results"
PADIM_SIZES = (256, 384, 512, 640)


def ours(data: Path, log) -> dict:
    """Wall seconds of `sae-inspect fit` on `data` with every default, and the fit's own phases."""
    from models.artifact import load_artifact

    out = WORK / f"{data.name}.safetensors"
    cmd = [sys.executable, "-m", "training.cli", "fit", str(data), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=log)
    wall = time.perf_counter() - t0
    _, meta, _ = load_artifact(out)
    onnx = out.with_suffix(".onnx")
    return {"wall_seconds": wall, "fit_profile_s": meta.get("fit_profile_s"), "export_written": onnx.exists(),
            "n_train_images": sum(meta.get(k, 0) for k in ("n_fit_images", "n_calibration_images",
                                                            "n_selection_images"))}


def padim(data: Path, size: int, log) -> dict:
    """PaDiM's fit seconds, or how its worker failed (bench.accuracy's PaDiM run at 640 px on deeppcb, fit and
    evaluation, was killed for memory; a failure here is recorded, not fatal to the other rows)."""
    cmd = [str(ensure_anomalib()), "-m", "bench.anomalib_worker", "--method", "padim", "--data", str(data),
           "--work", str(WORK / "anomalib"), "--size", str(size), "--no-eval"]
    try:
        return run_row(cmd, log)
    except WorkerFailed as e:
        print(f"[failed] padim {size} px on {data.name}: {e}", flush=True)
        return {"failed": str(e), "exit_status": e.code}


def _padim_cell(p: dict, ours_s: float) -> str:
    if "fit_seconds" in p:
        return f"{p['fit_seconds']:.0f} | {ours_s / p['fit_seconds']:.1f} | "
    code = p.get("exit_status")
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return f"failed ({how}) | - | "


def table(rows: dict) -> str:
    lines = [f"Machine: {machine()}; command: `python -m bench.fit_time`; one run, the sets one after the other, "
             "each set's fits back to back (ours, then PaDiM at each size).", "",
             "Ours: the wall clock of `sae-inspect fit DATA --out M` with every default (process start, "
             "features, SAE, scoring choice, calibration, atlas and the validated ONNX export beside the "
             "artifact). PaDiM: anomalib's `Engine.fit` alone (same backbone, EfficientNet-Lite0), process start "
             "and imports not counted.", "",
             "| set | train images | ours: fit + export, s | "
             + "".join(f"PaDiM {size} px, s | ours / that | " for size in PADIM_SIZES)
             + "where our fit goes (s; rest: process start, loading, the ONNX export and its validation) |",
             "|---|---|---|" + "---|---|" * len(PADIM_SIZES) + "---|"]
    for name, r in rows.items():
        o = r["ours"]
        profile = o["fit_profile_s"] or {}
        phases = ", ".join(f"{k} {v:.0f}" for k, v in profile.items())
        phases += f", rest {o['wall_seconds'] - sum(profile.values()):.0f}"
        peers = "".join(_padim_cell(r[f"padim_{size}"], o["wall_seconds"]) for size in PADIM_SIZES)
        lines.append(f"| {name} | {o['n_train_images']} | {o['wall_seconds']:.0f} | {peers}{phases} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = [("ours (sae-inspect fit, with export)", [rows[n]["ours"]["wall_seconds"] for n in names])]
    bars += [(f"PaDiM {size} px", [rows[n][f"padim_{size}"].get("fit_seconds", 0.0) for n in names])
             for size in PADIM_SIZES]  # a fit whose worker failed draws no bar
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("fit seconds (2 cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("datasets", nargs="*", type=Path, help="category folders (default: all in ../shared/datasets)")
    a = p.parse_args()
    data = [d.resolve() for d in a.datasets] or sorted(d for d in DATASETS.iterdir() if (d / "test").is_dir())
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    res = RESULTS / "fit_time.json"
    rows = json.loads(res.read_text())["rows"] if res.exists() else {}
    with open(WORK / "fit_time.log", "a") as log:
        for d in data:
            r = rows.setdefault(d.name, {})
            if "ours" not in r:
                print(f"[ours] {d.name}", flush=True)
                r["ours"] = ours(d, log)
            for size in PADIM_SIZES:
                if f"padim_{size}" not in r:
                    print(f"[padim {size}] {d.name}", flush=True)
                    r[f"padim_{size}"] = padim(d, size, log)
            res.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    done = {k: v for k, v in sorted(rows.items()) if {"ours", *(f"padim_{size}" for size in PADIM_SIZES)} <= set(v)}
    (RESULTS / "fit_time.md").write_text(table(done))
    plot(done, RESULTS / "fit_time.png")
    print(table(done))


if __name__ == "__main__":
    main()
