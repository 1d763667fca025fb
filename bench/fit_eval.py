"""Fit + evaluate on an MVTec-layout category, one row per configuration.

    python -m bench.fit_eval ../shared/datasets/magnetic_tile                   # defaults
    python -m bench.fit_eval ../shared/datasets/magnetic_tile --sweep           # defaults sweep

Each configuration runs `sae-inspect fit` and `sae-inspect evaluate` in child
processes, so fit time and peak memory (max RSS of the fit process) are measured
per row. Finished rows are cached in the results JSON and skipped on a rerun.
Writes bench/results/fit_eval_<category>[_sweep].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Each sweep row changes one setting of the base it started from (SAE 4x, no letterbox margin).
BASE = ["--expansion", "4", "--margin", "0"]
SWEEP = {
    "base (expansion 4, margin 0)": BASE,
    "stages 1,2,3": BASE + ["--stages", "1", "2", "3"],
    "k 8": BASE + ["--k", "8"],
    "k 32": BASE + ["--k", "32"],
    "expansion 8": BASE + ["--expansion", "8"],
    "steps 1000": BASE + ["--steps", "1000"],
    "mode resize (squash)": BASE + ["--mode", "resize"],
    "size 320": BASE + ["--size", "320"],
}


def run(cmd: list[str], log) -> tuple[float, int]:
    """Run a command, stream its stderr to `log`; -> (seconds, peak RSS bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}")
    run.last_stdout = out
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--sweep", action="store_true", help="compare the candidate defaults")
    p.add_argument("--fresh", action="store_true", help="ignore cached rows")
    a = p.parse_args()
    data = Path(a.data)
    name = f"fit_eval_{data.name}" + ("_sweep" if a.sweep else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    res_path = RESULTS / f"{name}.json"
    cached = {} if a.fresh or not res_path.exists() else json.loads(res_path.read_text())["rows"]
    configs = SWEEP if a.sweep else {"default": []}
    work = ROOT / "bench" / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows = dict(cached)
    exe = [sys.executable, "-m", "training.cli"]
    with open(work / f"{name}.log", "a") as log:
        for label, extra in configs.items():
            if label in rows:
                print(f"[cached] {label}")
                continue
            print(f"[run] {label}: fit", flush=True)
            model = work / f"{name}_{label.replace(' ', '_').replace(',', '')}.safetensors"
            fit_s, fit_rss = run(exe + ["fit", str(data), "--out", str(model)] + extra, log)
            print(f"[run] {label}: evaluate ({fit_s:.0f}s fit)", flush=True)
            ev_dir = work / f"{model.stem}_eval"
            eval_s, _ = run(exe + ["evaluate", str(model), str(data), "--out", str(ev_dir)], log)
            m = json.loads((ev_dir / "metrics.json").read_text())
            rows[label] = {
                "args": extra, "image_auroc": m["image_auroc"], "pixel_auroc": m.get("pixel_auroc"),
                "aupro_30": m.get("aupro_30"), "false_alarm_rate": m["false_alarm_rate"],
                "recall": m["recall"], "f1": m["f1"], "alpha": m["alpha"],
                "fit_seconds": fit_s, "fit_peak_rss_mb": fit_rss / 2**20,
                "evaluate_seconds": eval_s, "n_test_images": m["n_images"],
                "artifact_kb": model.stat().st_size / 1024,
            }
            res_path.write_text(json.dumps({"dataset": str(data), "machine": machine(), "rows": rows}, indent=2))
    res_path.write_text(json.dumps({"dataset": str(data), "machine": machine(), "rows": rows}, indent=2))
    lines = [f"Dataset `{data.name}`; machine: {machine()}; command: `python -m bench.fit_eval {a.data}"
             + (" --sweep`" if a.sweep else "`"), "",
             "| config | image AUROC | pixel AUROC | AUPRO@30% | false-alarm rate (alpha) | recall | F1 "
             "| fit s | fit peak RSS MB | artifact KB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro_30']:.3f} | "
                     f"{r['false_alarm_rate']:.3f} ({r['alpha']}) | {r['recall']:.3f} | {r['f1']:.3f} | "
                     f"{r['fit_seconds']:.0f} | {r['fit_peak_rss_mb']:.0f} | {r['artifact_kb']:.0f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
