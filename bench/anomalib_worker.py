"""One anomalib row of bench/anomalib_compare.py; runs inside bench/.venv-anomalib (anomalib==2.7.0).

Trains anomalib's own PatchCore or PaDiM Lightning model with anomalib's Engine on
our default backbone (EfficientNet-Lite0, the offline ImageNet weights ported by
models/backbone.py, layers blocks.2 + blocks.4 = our stages 2 and 3), input
256 x 256 (`--size`: another side) normalised with mean = std = 0.5 as our backbone expects, then predicts
the whole test split and scores it with the same metric code as our rows
(training/metrics.py). Prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.engine import Engine
from anomalib.models import Padim, Patchcore
from anomalib.pre_processing import PreProcessor
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Compose, Normalize, Resize

from models.backbone import build_lite_classifier
from training.metrics import aupro, auroc, pixel_auroc

ROOT = Path(__file__).resolve().parents[1]

SIZE = 256
LAYERS = ["blocks.2", "blocks.4"]  # timm feature_info names of our stages 2 (stride 8) and 3 (stride 16)


def static_padding(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Replace timm's dynamic TF 'same' padding convs with fixed ZeroPad2d + Conv2d for one input size.

    anomalib traces the backbone with torch.fx, which cannot follow Conv2dSame's
    data-dependent padding; for a fixed input size the padding is a constant, so the
    rewritten model computes exactly the same function (checked below).
    """
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import get_same_padding

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: sizes.__setitem__(n, inp[0].shape[-2:]))
             for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    for h in hooks:
        h.remove()
    for name, m in list(model.named_modules()):
        if not isinstance(m, Conv2dSame):
            continue
        ih, iw = sizes[name]
        ph = get_same_padding(ih, m.kernel_size[0], m.stride[0], m.dilation[0])
        pw = get_same_padding(iw, m.kernel_size[1], m.stride[1], m.dilation[1])
        conv = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups,
                               m.bias is not None)
        conv.load_state_dict(m.state_dict())
        new = torch.nn.Sequential(torch.nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), conv)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], new)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5), "static padding changed the backbone's output"
    return model


def cap_coreset(seconds: float) -> dict:
    """Make anomalib's k-center greedy coreset finish on 2 CPU cores: the same greedy (same projection,
    same random start, same farthest-point rule), with the distance update computed as
    ||x||^2 - 2 x.c + ||c||^2 from precomputed norms (one matrix-vector product instead of a full
    difference tensor; minimum and argmax are unchanged up to float rounding), stopped after `seconds`.
    The returned dict says how many centres were chosen of how many asked for."""
    from anomalib.models.components.sampling import k_center_greedy as kcg

    info: dict = {"coreset_time_cap_s": seconds}

    def select(self) -> list[int]:
        self.model.fit(self.embedding)
        feats = self.model.transform(self.embedding).float()
        sq = (feats * feats).sum(1)
        idx = int(torch.randint(high=self.n_observations, size=(1,)).item())
        chosen = [idx]
        best = torch.full_like(sq, float("inf"))
        t0 = time.perf_counter()
        while len(chosen) < self.coreset_size and time.perf_counter() - t0 < seconds:
            c = feats[idx]
            best = torch.minimum(best, (sq - 2 * (feats @ c) + sq[idx]).clamp_min_(0))
            best[idx] = 0.0
            idx = int(torch.argmax(best).item())
            chosen.append(idx)
        info.update(coreset_asked=int(self.coreset_size), coreset_chosen=len(chosen),
                    coreset_seconds=time.perf_counter() - t0, n_patches=int(self.n_observations))
        return chosen

    kcg.KCenterGreedy.select_coreset_idxs = select
    return info


class Samples(AnomalibDataset):
    def __init__(self, rows: list[dict], task: str) -> None:
        super().__init__()
        df = pd.DataFrame(rows)
        df.attrs["task"] = task
        self.samples = df


def samples(data: Path, train_dir: Path) -> tuple[Samples, Samples]:
    exts = {".png", ".jpg", ".jpeg", ".bmp"}
    train = [{"image_path": str(p), "split": "train", "label_index": 0, "mask_path": ""}
             for p in sorted(train_dir.iterdir()) if p.suffix.lower() in exts]
    test = []
    for sub in sorted((data / "test").iterdir()):
        for p in sorted(sub.iterdir()):
            if p.suffix.lower() not in exts:
                continue
            mask = data / "ground_truth" / sub.name / f"{p.stem}_mask.png"
            test.append({"image_path": str(p), "split": "test", "label_index": int(sub.name != "good"),
                         "mask_path": str(mask) if sub.name != "good" and mask.is_file() else ""})
    has_masks = any(t["mask_path"] for t in test)  # a category without masks: image metrics only
    return Samples(train, "classification"), Samples(test, "segmentation" if has_masks else "classification")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=["patchcore", "padim"], required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--train", type=Path, help="folder of good training images (default data/train/good)")
    p.add_argument("--coreset", type=float, default=0.01)
    p.add_argument("--coreset-seconds", type=float, default=0.0,
                   help="time cap of the coreset greedy (0: anomalib's own loop, uncapped)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--size", type=int, default=SIZE, help=f"square input side in pixels (default {SIZE})")
    a = p.parse_args()
    size = a.size
    torch.manual_seed(0)
    train_ds, test_ds = samples(a.data, a.train or a.data / "train" / "good")
    pre = PreProcessor(transform=Compose([Resize((size, size), antialias=True),
                                          Normalize(mean=[0.5] * 3, std=[0.5] * 3)]))
    backbone = static_padding(build_lite_classifier("efficientnet_lite0"), size)
    common = {"pre_processor": pre, "post_processor": False, "evaluator": False, "visualizer": False}
    capped = cap_coreset(a.coreset_seconds) if a.method == "patchcore" and a.coreset_seconds > 0 else {}
    if a.method == "patchcore":
        model = Patchcore(backbone=backbone, layers=LAYERS, coreset_sampling_ratio=a.coreset, **common)
    else:
        model = Padim(backbone=backbone, layers=LAYERS, n_features=100, **common)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(a.work))
    train_loader = DataLoader(train_ds, batch_size=16, shuffle=False, num_workers=0, collate_fn=train_ds.collate_fn)
    t0 = time.perf_counter()
    engine.fit(model=model, train_dataloaders=train_loader)
    fit_s = time.perf_counter() - t0
    state = model.model.state_dict()
    model_bytes = sum(v.numel() * v.element_size() for k, v in state.items()
                      if not k.startswith(("feature_extractor.", "backbone.")))
    row = {"fit_seconds": fit_s, "n_train_images": len(train_ds), "model_bytes": model_bytes}
    if a.method == "patchcore":
        row["memory_bank_patches"] = int(model.model.memory_bank.shape[0])
        row.update(capped)
    if not a.no_eval:
        test_loader = DataLoader(test_ds, batch_size=16, shuffle=False, num_workers=0, collate_fn=test_ds.collate_fn)
        preds = engine.predict(model=model, dataloaders=test_loader, return_predictions=True)
        scores, labels, maps, masks = [], [], [], []
        for b in preds:
            scores += b.pred_score.flatten().tolist()
            labels += b.gt_label.flatten().tolist()
            if b.gt_mask is None:
                continue
            am = torch.nn.functional.interpolate(b.anomaly_map.reshape(-1, 1, *b.anomaly_map.shape[-2:]).float(),
                                                 size=(size, size), mode="bilinear")[:, 0]
            gm = torch.nn.functional.interpolate(b.gt_mask.reshape(-1, 1, *b.gt_mask.shape[-2:]).float(),
                                                 size=(size, size), mode="area")[:, 0] > 0.5
            maps += list(am.numpy())
            masks += list(gm.numpy())
        row["image_auroc"] = auroc(np.array(labels), np.array(scores))
        if masks and any(m.any() for m in masks):
            row["pixel_auroc"] = pixel_auroc(masks, maps).value
            row["aupro_30"] = aupro(masks, maps)
        row["n_test_images"] = len(scores)
        # forward throughput of anomalib's torch model on pre-processed size x size tensors
        net = model.model.eval()
        imgs = [Resize((size, size), antialias=True)(test_ds[i].image) for i in range(0, len(test_ds), 10)][:64]
        x = Normalize(mean=[0.5] * 3, std=[0.5] * 3)(torch.stack(imgs))
        for bs in (1, 16):
            with torch.no_grad():
                net(x[:bs])
                n, t1, i = 0, time.perf_counter(), 0
                while time.perf_counter() - t1 < 15:
                    xb = x[(i * bs) % (len(x) - bs + 1):][:bs]
                    net(xb)
                    n += len(xb)
                    i += 1
            row[f"images_per_s_batch{bs}"] = n / (time.perf_counter() - t1)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
