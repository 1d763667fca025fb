"""The drift and burst alarms (models/drift.py) on streams of real model scores.

A model is fitted on generated parts (``models.synthetic``, plate in fixed pose) with the default
pipeline, then scores

* a pool of new good parts: clean streams are random orders of the pool after the calibration
  (every order of i.i.d. scores is exchangeable with the calibration), scored against the
  Shiryaev-Roberts bound: at threshold A the mean number of images to a false alarm is >= A;
* drifted parts, after a clean run-in: darker lighting, defocus blur, the camera shifted, a new
  product variant (a marking zone), and a burst of defective parts: images until the
  drift alarm and the burst alarm at the default threshold (1e6).

    python -m bench.drift      # ~8 min on 2 cores; writes bench/results/drift.{json,md,png}

Model scores are cached in bench/work/drift_scores.npz (per kind of stream), so a change to the
monitor alone reruns in seconds; delete the file to refit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"


def _drifted(kind: str, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    from models.synthetic import DEFECTS, add_defect, good_part, marked_part

    out = []
    for i in range(n):
        img = good_part(rng)
        if kind == "darker lighting (x0.8)":
            img = (img.astype(np.float32) * 0.8).astype(np.uint8)
        elif kind == "defocus blur (sigma 1.5 px)":
            img = cv2.GaussianBlur(img, (0, 0), 1.5)
        elif kind == "camera shifted (12 px)":
            img = np.roll(img, 12, axis=1)
        elif kind == "new product variant (marking zone)":
            img = marked_part(rng)
        elif kind in ("defect burst (20 % defective)", USUAL):
            if rng.random() < (0.02 if kind == USUAL else 0.2):
                img = add_defect(rng, img, DEFECTS[i % len(DEFECTS)])[0]
        else:
            raise ValueError(kind)
        out.append(img)
    return out


USUAL = "no change: defects at the usual rate (2 %, declared)"
DRIFTS = ("darker lighting (x0.8)", "defocus blur (sigma 1.5 px)", "camera shifted (12 px)",
          "new product variant (marking zone)", "defect burst (20 % defective)", USUAL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--drifted", type=int, default=300)
    p.add_argument("--run-in", type=int, default=500)
    p.add_argument("--streams", type=int, default=20)
    a = p.parse_args()

    import tempfile

    import torch

    from models.config import ModelConfig
    from models.drift import DriftConfig, DriftMonitor
    from models.imageio import list_images
    from models.synthetic import good_part, write_dataset
    from training.calibrate import CalibrationConfig
    from training.fit import FitConfig
    from training.pipeline import fit_calibrated

    torch.set_num_threads(2)

    cache = ROOT / "bench" / "work" / "drift_scores.npz"
    key = f"train{a.train}-pool{a.pool}-drifted{a.drifted}"
    cached = dict(np.load(cache)) if cache.exists() else {}
    if cached.get("key") != key:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            data = write_dataset(tmp, n_train=a.train, n_test_good=0, n_test_bad=0, seed=11)
            det = fit_calibrated(list_images(data / "train" / "good"), ModelConfig(), FitConfig(),
                                 CalibrationConfig(), "cpu")
        print(f"fitted in {time.perf_counter() - t0:.0f}s", flush=True)

        def scores_of(images: list[np.ndarray]) -> np.ndarray:
            return np.asarray([det.score_map(m) for i in range(0, len(images), 32)
                               for m, _ in det.maps(images[i : i + 32])])

        rng = np.random.default_rng(12)
        cached = {"key": key, "cal": np.asarray(det.calibration.scores),
                  "alpha": det.calibration.alpha, "threshold": det.calibration.threshold,
                  "pool": scores_of([good_part(rng) for _ in range(a.pool)])}
        for j, kind in enumerate(DRIFTS):
            n = 5 * a.drifted if kind == USUAL else a.drifted
            cached[kind] = scores_of(_drifted(kind, np.random.default_rng(200 + j), n))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **cached)
    cal, alpha, thr = cached["cal"], float(cached["alpha"]), float(cached["threshold"])
    pool = cached["pool"]
    print(f"{len(cal)} calibration scores, alpha {alpha:.4f}", flush=True)
    print(f"scored {a.pool} new good parts; flagged {np.mean(pool > thr):.4f} (alpha {alpha:.4f})", flush=True)

    # clean streams: false alarms of each statistic (the monitor restarts after each of its alarms)
    def false_alarms(order: np.ndarray, threshold: float, which: str, seed: int) -> int:
        mon, n = DriftMonitor(cal, alpha, DriftConfig(threshold=threshold), seed), 0
        for s in order:
            mon.observe(float(s))
            if getattr(mon, which):
                n += 1
                mon = DriftMonitor(cal, alpha, DriftConfig(threshold=threshold), seed * 1000 + n)
        return n

    clean = {}
    for threshold in (10.0, 100.0, 1000.0, 1e6):
        orders = [np.random.default_rng(100 + k).permutation(pool) for k in range(a.streams)]
        row = {"threshold": threshold, "streams": a.streams, "stream_length": a.pool}
        for which in ("drifting", "bursting"):
            n = sum(false_alarms(o, threshold, which, k) for k, o in enumerate(orders))
            row[which] = {"false_alarms": n, "images_per_false_alarm": a.pool * a.streams / n if n else None}
        clean[str(threshold)] = row
        print(row, flush=True)

    drifts, traces = {}, {}
    for j, kind in enumerate(DRIFTS):
        drifted = cached[kind]
        stream = np.r_[np.random.default_rng(300 + j).permutation(pool)[: a.run_in], drifted]
        cfg = DriftConfig(usual_defect_rate=0.02) if kind == USUAL else DriftConfig()
        mon = DriftMonitor(cal, alpha, cfg, seed=j)
        first_drift = first_burst = None
        trace = []
        for i, s in enumerate(stream):
            mon.observe(float(s))
            trace.append((mon.drift_evidence, mon.burst_evidence))
            if i >= a.run_in:
                if first_drift is None and mon.drifting:
                    first_drift = i - a.run_in + 1
                if first_burst is None and mon.bursting:
                    first_burst = i - a.run_in + 1
            elif mon.drifting or mon.bursting:
                print(f"{kind}: alarm during the clean run-in at image {i}", flush=True)
        drifts[kind] = {"images_to_drift_alarm": first_drift, "images_to_burst_alarm": first_burst,
                        "flagged_share_after": float(np.mean(drifted > thr)),
                        "median_score_ratio_after": float(np.median(drifted) / thr), "n_drifted": len(drifted)}
        traces[kind] = trace
        print(kind, drifts[kind], flush=True)

    res = {"machine": machine(), "n_calibration": len(cal), "alpha": alpha,
           "threshold_default": DriftConfig().threshold, "pool_flagged_share": float(np.mean(pool > thr)),
           "clean": clean, "drifts": drifts, "run_in": a.run_in}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "drift.json").write_text(json.dumps(res, indent=2))
    (OUT / "drift.md").write_text(table(res))
    plot(traces, a.run_in, DriftConfig().threshold)
    print(table(res))


def table(res: dict) -> str:
    out = [f"Machine: {res['machine']}; command: `python -m bench.drift`. A model fitted on generated parts "
           f"({res['n_calibration']} calibration images, alpha {res['alpha']:.4f}); new good parts were flagged at "
           f"{res['pool_flagged_share']:.4f}.\n",
           "**Clean streams** (random orders of new good parts; a statistic restarts after each of its alarms):\n",
           "| alarm threshold A (mean images between false alarms >= A) | streams x images | drift: false alarms, "
           "images per false alarm | burst: false alarms, images per false alarm |", "|---|---|---|---|"]
    for c in res["clean"].values():
        cells = [f"{c[w]['false_alarms']}, " + (f"{c[w]['images_per_false_alarm']:.0f}" if c[w]["false_alarms"]
                                                else f"> {c['streams'] * c['stream_length']}")
                 for w in ("drifting", "bursting")]
        out.append(f"| {c['threshold']:g} | {c['streams']} x {c['stream_length']} | {cells[0]} | {cells[1]} |")
    out += [f"\n**Drifts** after {res['run_in']} clean images, default threshold A = "
            f"{res['threshold_default']:g}:\n",
            "| drift | share of drifted parts flagged | median score / threshold | images to the drift alarm | "
            "images to the burst alarm |", "|---|---|---|---|---|"]
    for kind, d in res["drifts"].items():
        def fmt(x, n=d["n_drifted"]):
            return f"none in {n}" if x is None else str(x)
        out.append(f"| {kind} | {d['flagged_share_after']:.2f} | {d['median_score_ratio_after']:.2f} | "
                   f"{fmt(d['images_to_drift_alarm'])} | {fmt(d['images_to_burst_alarm'])} |")
    out.append("\n![evidence over the stream](drift.png)\n")
    return "\n".join(out) + "\n"


def plot(traces: dict, run_in: int, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for kind, tr in traces.items():
        t = np.asarray(tr)
        x = np.arange(len(t)) - run_in
        axes[0].plot(x, np.maximum(t[:, 0], 0), label=kind)
        axes[1].plot(x, np.maximum(t[:, 1], 0), label=kind)
    for ax, name in zip(axes, ("drift evidence", "burst evidence"), strict=True):
        ax.axhline(np.log10(threshold), color="k", ls="--", lw=1)
        ax.axvline(0, color="grey", lw=1)
        ax.set_xlabel("images since the change")
        ax.set_title(name + " (log10, floored at 0)")
    axes[0].set_ylabel("log10 statistic")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "drift.png", dpi=90)


if __name__ == "__main__":
    main()
