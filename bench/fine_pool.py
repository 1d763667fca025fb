"""Between pool 1 and pool 3: the finest backbone stage unpooled, the deeper stages 3 x 3 averaged.

`ScoringConfig.pool` averages every stage over its 3 x 3 neighbourhood before the deeper stages are resized to the
finest grid; `fit --pool 1` (no average) gives sharper maps (AUPRO 0.881 against 0.822 over three seeds) but loses
image AUROC on magnetic_tile and tire. The finest stage is the one that localises, so this keeps the deeper stage's
average and drops only the finest's. Not a product option: `models.features.patch_features` is patched for the run,
and each set runs `bench.accuracy`'s own variant path (a whole default fit from cached backbone features, then the
evaluation), its row stored in bench/results/accuracy.json under `ONE_OFF`'s label.

    python -m bench.fine_pool 256 ../shared/datasets/magnetic_tile     # the canvas the default takes there
    python -m bench.fine_pool 640 ../shared/datasets/tire ../shared/datasets/deeppcb ../shared/datasets/bsdata_pitting
    python -m bench.accuracy --table-only                               # ~5 min a set on 2 cores, features cached
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import bench.accuracy as acc
import models.features

PATCH_FEATURES = models.features.patch_features


def patch_features(maps: list[torch.Tensor], pool: int, context: int = 0) -> torch.Tensor:
    """`models.features.patch_features` with the average on every stage but the finest: the deeper stages averaged
    here, then the product's function with no average of its own (it resizes, concatenates, adds the context)."""
    if pool == 1:
        return PATCH_FEATURES(maps, pool, context)
    deeper = [F.avg_pool2d(m.float(), pool, stride=1, padding=pool // 2, count_include_pad=False) for m in maps[1:]]
    return PATCH_FEATURES([maps[0], *deeper], 1, context)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("size", type=int, choices=(256, 640), help="canvas side (the one the default takes on the set)")
    p.add_argument("datasets", nargs="+", type=Path)
    a = p.parse_args()
    models.features.patch_features = patch_features  # backbone_features looks it up at call time
    name = f"fine_pool1_{a.size}"
    acc.VARIANTS[name] = (acc.ONE_OFF[name], {"preprocess": {"size": a.size}}, {}, {})
    rows = json.loads(acc.RES.read_text())["rows"] if acc.RES.exists() else {}

    def save() -> None:
        acc.RES.write_text(json.dumps({"machine": acc.machine(), "rows": rows}, indent=2))

    for d in a.datasets:
        acc.run_variant(d.resolve(), name, rows, save)


if __name__ == "__main__":
    main()
