"""Do good images come in groups of consecutive shots? Evidence for the default ``runs:8`` split.

For the first 120 train/good images (file-name order) and the first 25 test/good images of each
shared category: backbone features of the first canvas (the default geometry), standardised per
dimension; for each training image its nearest other training image (mean squared distance). Reports
the share whose nearest neighbour sits within two places in file order (chance: about 4 / 120) and the
median nearest-neighbour distance of training images against that of test/good images (new parts) to
the training images. A high share and a test distance well above the training one mean that a random
draw of single images puts shots of one part on both sides of a split.

    python -m bench.groups_check          # -> bench/results/groups_check.{json,md}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.anomalib_compare import subset
from bench.fit_eval import machine
from bench.small_train import IMAGES

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "results"


def check(data: Path, n_train: int = 120, n_test: int = 25) -> dict:
    import torch

    from models.config import ModelConfig
    from models.detector import shared_backbone
    from models.features import extract_features
    from models.preprocess import make_canvases
    from training.data import iter_images, list_images

    torch.set_num_threads(2)
    cfg = ModelConfig()
    bb = shared_backbone(cfg.backbone.name, cfg.backbone.stages, None, "cpu")
    train = list_images(data / "train" / "good")[:n_train]
    test = list_images(data / "test" / "good")[:n_test]
    feats = []
    for _, img in iter_images(train + test, cfg.preprocess):  # plain patch features (context 0): the look
        canvases, _ = make_canvases(img, cfg.preprocess)
        feats.append(extract_features(bb, canvases[:1], cfg.backbone.mean, cfg.backbone.std, cfg.scoring.pool,
                                      "cpu", 0)[0].numpy().ravel())
    n = len(train)
    d = distances(np.stack(feats))
    cut = subset(data, IMAGES / len(list_images(data / "train" / "good")))  # bench.small_train's 90 images
    return {"dataset": data.name, "n_train": n, "n_test": len(test),
            "nn_within_2": within_2(d[:n, :n]),
            "median_nn_train": float(np.median(d[:n, :n].min(1))),
            "median_nn_test_to_train": float(np.median(d[n:, :n].min(1))),
            # the same question asked of 16 x 16 grey thumbnails, no backbone: could a fit answer it cheaply?
            "thumb_within_2": within_2(distances(thumbnails(train))),
            "thumb_within_2_cut": within_2(distances(thumbnails(list_images(cut))))}


def distances(v: np.ndarray) -> np.ndarray:
    """Mean squared distance between rows standardised per column, the diagonal at infinity."""
    v = (v - v.mean(0)) / (v.std(0) + 1e-6)
    sq = (v**2).sum(1)
    d = (sq[:, None] + sq[None] - 2 * v @ v.T) / v.shape[1]
    np.fill_diagonal(d, np.inf)
    return d


def within_2(d: np.ndarray) -> float:
    """Share of images whose nearest neighbour sits within two places in file order."""
    return float(np.mean(np.abs(d.argmin(1) - np.arange(len(d))) <= 2))


def thumbnails(paths: list[Path]) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (16, 16), interpolation=cv2.INTER_AREA)
                     .astype(np.float32).ravel() for p in paths])


def main() -> None:
    rows = [check(d) for d in sorted(DATASETS.iterdir()) if (d / "train" / "good").is_dir()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "groups_check.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"Machine: {machine()}; command: `python -m bench.groups_check`. First 120 train/good and 25 "
             "test/good images per category, backbone features of the default geometry. Thumbnails: the same "
             "nearest-neighbour share from 16 x 16 grey thumbnails (no backbone), on the first 120 train/good images "
             f"and on bench.small_train's cut of {IMAGES} (chance: about 4 / 120 and 4 / {IMAGES}).", "",
             "| category | nearest neighbour within 2 places in file order | median NN distance, train | "
             f"median NN distance, test/good to train | ratio | thumbnails: within 2, first 120 | thumbnails: within "
             f"2, the {IMAGES}-image cut |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["median_nn_test_to_train"] / r["median_nn_train"]
        lines.append(f"| {r['dataset']} | {r['nn_within_2']:.2f} | {r['median_nn_train']:.3f} | "
                     f"{r['median_nn_test_to_train']:.3f} | {ratio:.2f} | {r['thumb_within_2']:.2f} | "
                     f"{r['thumb_within_2_cut']:.2f} |")
    (OUT / "groups_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
