"""Can good images alone tell that per-position scoring will not transfer to new parts?

On ``tire`` (free pose) position-normalised scores separate synthetic defects on held-out good images at
least as well as the raw error does, yet on new tyres (test/good) they raise 88 % false alarms at alpha 0.01 where
the raw error raises 4 %. This benchmark measures, for each candidate scoring of each shared set's default
model (``bench/work/accuracy_<set>.safetensors``, written by ``python -m bench.accuracy``), five
good-image-only signals a fit could compute on its held-out selection split, beside what happened on
test/good:

* **in-sample gap**: AUROC of held-out selection images against fit images (48 each); far above 0.5 = the
  model and its statistics rebuild their own images much better than new ones of the same product;
* **position structure left**: share of the held-out score maps' variance explained by position (between-
  position variance of the mean map, less its sampling noise, over the total); a normalisation that
  transfers leaves little;
* **shift sensitivity**: AUROC of crops shifted by 1 % and 2 % of the image's long side against the
  centred crop of the same image (a pose change a free-pose line makes all the time);
* **features explained by position**: share of the backbone features' variance on fit images that the
  per-position mean explains (each half's means tested on the other half); near 1 = the same content sits
  at the same place in every image;
* **cross-fitted statistics**: the per-position error statistics refitted on the held-out selection images
  instead of the fit images (whose errors the SAE has seen), scored with ``position``, calibrated on the
  calibration split: test image AUROC and false alarms on test/good (beside the fitted statistics' in
  accuracy.json);
* **truth**: AUROC of test/good images against the selection images (how far new good parts move).

    python -m bench.selection_transfer        # every shared set; writes bench/results/selection_transfer.{json,md}

One torch job, 2 threads, about 8 minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.accuracy import SCORING_ROWS
from bench.fit_eval import machine

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
WORK = ROOT / "bench" / "work"
OUT = ROOT / "bench" / "results"
N = 48
SHIFTS = (0.01, 0.02)


def shifted_crops(pictures: list, frac: float, rng: np.random.Generator) -> tuple[list, list]:
    """(centred crops, the same pictures moved by `frac` of the long side: ``training.defects.pose_jitter``),
    same size each."""
    from models.preprocess import Picture
    from training.defects import pose_jitter

    ref, moved = [], []
    for p in pictures:
        h, w = p.pixels.shape[:2]
        r = max(1, round(frac * max(h, w)))
        c0, c1 = p.pixels[r:h - r, r:w - r], pose_jitter(rng, p.pixels, frac)
        ref.append(Picture(c0, c0.shape[:2]))
        moved.append(Picture(c1, c1.shape[:2]))
    return ref, moved


def feature_position_r2(det, paths: list[Path]) -> float:
    """Share of the patch features' variance explained by their grid position, cross-validated over two halves."""
    import torch

    from models.preprocess import make_canvases, valid_cells

    feats, valid = [], []
    for p in paths:
        canvases, layout = make_canvases(det.read(p), det.config.preprocess)
        if len(canvases) == 1:  # one canvas per image: positions are comparable across images
            feats.append(det.features(canvases)[0].float())
            valid.append(torch.as_tensor(valid_cells(layout, det.grid))[0])
    f, v = torch.stack(feats), torch.stack(valid).all(0)  # (N, h, w, C); cells real in every image
    halves = f[: len(f) // 2], f[len(f) // 2:]

    def r2(train: torch.Tensor, test: torch.Tensor) -> float:
        per_pos = ((test - train.mean(0)) ** 2).sum(-1)[:, v].mean()
        overall = ((test - train.mean((0, 1, 2))) ** 2).sum(-1)[:, v].mean()
        return float(1 - per_pos / overall)

    return (r2(*halves) + r2(*halves[::-1])) / 2


def cross_fitted(det, select: list, split, data: Path) -> dict:
    """``position`` with its error statistics fitted on the selection pictures: test AUROC and false alarms."""
    import torch

    from models.preprocess import make_canvases, valid_cells
    from models.scoring import fit_position_stats
    from training.calibrate import CalibrationConfig, calibrate
    from training.evaluate import evaluate

    n = det.grid.cells
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    values, cells = [], []
    for pic in select:
        canvases, layout = make_canvases(pic, det.config.preprocess)
        err, v = det.canvas_pass(canvases).err, torch.as_tensor(valid_cells(layout, det.grid))
        for b in range(len(err)):
            values.append(err[b][v[b]])
            cells.append(torch.stack([rows[v[b]], cols[v[b]]], 1))
    mean, std = fit_position_stats(torch.cat(values), torch.cat(cells), n)
    d = det.replace(score_stats=det.score_stats._replace(err_mean=mean, err_std=std)).with_scoring(normalize="position")
    d = d.replace(calibration=calibrate(d, split.calibrate, CalibrationConfig()))
    m, _ = evaluate(d, data)
    return {"image_auroc": m["image_auroc"], "false_alarm_rate": m["false_alarm_rate"]}


def run(data: Path) -> dict:
    import cv2
    import torch

    from models.config import NORMALIZE_CHOICES
    from models.detector import Detector
    from training.calibrate import CalibrationConfig, split_images
    from training.data import good_images, mvtec_test_set
    from training.metrics import auroc

    torch.set_num_threads(2)
    det = Detector.from_artifact(WORK / f"accuracy_{data.name}.safetensors", device="cpu")
    d = det.with_scoring(normalize=NORMALIZE_CHOICES[0])
    split = split_images(good_images([data]), CalibrationConfig())
    read = lambda paths: [det.read(p) for p in paths]  # noqa: E731
    sets = {"fit": read(split.fit[:: max(1, len(split.fit) // N)][:N]), "select": read(split.select),
            "test_good": read([i.path for i in mvtec_test_set(data) if i.defect == "good"][:N])}
    rng = np.random.default_rng(0)
    for frac in SHIFTS:
        sets[f"centred_{frac}"], sets[f"shifted_{frac}"] = shifted_crops(sets["select"], frac, rng)
    scores, struct = {}, {}
    for name, pics in sets.items():
        maps = d.maps(pics, lambda c: d.candidate_canvas_maps(c, NORMALIZE_CHOICES))
        scores[name] = np.asarray([[d.score_map(m[..., j]) for j in range(len(NORMALIZE_CHOICES))] for m, _ in maps])
        if name == "select":  # on a common 64 x 64 grid: sizes vary on some sets
            m = np.stack([cv2.resize(np.ascontiguousarray(w), (64, 64), interpolation=cv2.INTER_AREA) for w, _ in maps])
            for j, c in enumerate(NORMALIZE_CHOICES):
                x = m[..., j]
                struct[c] = float((x.mean(0).var() - x.var(0).mean() / len(x)) / x.var())

    def apart(a: str, b: str) -> dict:
        return {c: auroc(np.r_[np.zeros(len(scores[a])), np.ones(len(scores[b]))],
                         np.r_[scores[a][:, j], scores[b][:, j]]) for j, c in enumerate(NORMALIZE_CHOICES)}

    return {"dataset": data.name, "in_sample_gap": apart("fit", "select"), "position_structure_left": struct,
            "features_explained_by_position": feature_position_r2(det, split.fit[:: max(1, len(split.fit) // 96)][:96]),
            "cross_fitted_position": cross_fitted(det, sets["select"], split, data),
            **{f"shift_{f}": apart(f"centred_{f}", f"shifted_{f}") for f in SHIFTS},
            "test_good_vs_select": apart("select", "test_good"), "n": {k: len(v) for k, v in sets.items()}}


def table(rows: dict) -> str:
    acc = json.loads((OUT / "accuracy.json").read_text())["rows"] if (OUT / "accuracy.json").exists() else {}
    cands = ("none", "position", "position_novelty")
    cols = [("in_sample_gap", "held-out vs fit images"), ("position_structure_left", "position structure left"),
            *[(f"shift_{f}", f"shift {f:.0%}") for f in SHIFTS],
            ("test_good_vs_select", "truth: test/good vs held-out")]
    out = [f"Machine: {machine()}; command: `python -m bench.selection_transfer`; each set's default model from "
           f"`python -m bench.accuracy`, its held-out selection split ({N} images at most per row). Each cell: "
           "none / position / position_novelty. AUROC columns: 0.5 = the two image groups score alike.\n",
           "| set | " + " | ".join(label for _, label in cols) + " | features explained by position | test image "
           "AUROC (false alarms on test/good), accuracy.json | position, statistics cross-fitted on held-out images |",
           "|---|" + "---|" * (len(cols) + 3)]
    for r in rows.values():
        t = [acc.get(f"{r['dataset']}|ablation: {SCORING_ROWS[c]}", {}) for c in cands]
        truth = " / ".join(f"{v['image_auroc']:.3f} ({v['false_alarm_rate']:.2f})" if v else "-" for v in t)
        cf = r["cross_fitted_position"]
        out.append(f"| {r['dataset']} | " + " | ".join(" / ".join(f"{r[k][c]:.3f}" for c in cands) for k, _ in cols)
                   + f" | {r['features_explained_by_position']:.2f} | {truth} | "
                   f"{cf['image_auroc']:.3f} ({cf['false_alarm_rate']:.2f}) |")
    return "\n".join(out) + "\n"


def main() -> None:
    res = OUT / "selection_transfer.json"
    rows = json.loads(res.read_text()) if res.exists() else {}
    for d in sorted(p for p in DATASETS.iterdir() if p.is_dir()):
        if d.name not in rows and (WORK / f"accuracy_{d.name}.safetensors").exists():
            print(f"[run] {d.name}", flush=True)
            rows[d.name] = run(d)
            res.write_text(json.dumps(rows, indent=2))
    (OUT / "selection_transfer.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
