"""Fit a detector on good images: stream features into a reservoir, train the SAE, calibrate.

Memory is bounded by the reservoir (``max_patches`` x feature dim x 4 bytes), not by
the number of images: features are extracted image batch by image batch and sampled
into a fixed-size reservoir (Vitter's algorithm R), so 50,000 images need the same
RAM as 500.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.backbone_runtime import offline_backbone
from models.config import ModelConfig, PreprocessConfig
from models.detector import Detector, shared_backbone
from models.features import extract_features, fit_standardization, scored_error, standardize
from models.geometry import FeatureGrid
from models.net import ScoreStats
from models.preprocess import Picture, as_float, make_canvases, valid_cells
from models.sae import TopKSAE, training_losses
from models.scoring import fit_position_stats, latent_novelty, latent_rarity
from training.data import iter_images
from training.defects import POSE_JITTER, SYNTHETIC_KINDS, moved_picture, synthetic_defect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    steps: int = 2000
    """SAE optimisation steps."""
    batch_size: int = 2048
    """Patches per SAE step."""
    lr: float = 1e-3
    """Adam learning rate; decays linearly to 0 over the last 20% of steps."""
    max_patches: int = 300_000
    """Reservoir size: patches kept for SAE training (memory = max_patches x dim x 4 B)."""
    image_batch: int = 8
    """Images per backbone forward during extraction."""
    atlas_crops: int = 2
    """Good-image crops kept per latent for explanations (0 = no atlas)."""
    atlas_crop_px: int = 24
    """Side of each atlas crop in canvas pixels."""
    repair: float = 0.0
    """Repair training: share of each SAE batch whose input is corrupted (features of the same image
    carrying a synthetic defect, or clean features plus noise) while the target stays the clean feature,
    so the SAE learns to project off-manifold patches onto good-product atoms rather than copy them.
    0 trains a plain autoencoder (copy)."""
    repair_noise: float = 0.3
    """Std of the feature noise of repair training, in standardised feature units."""
    augment: int = 2
    """Moved copies of each fit image (a pose jitter of ``POSE_JITTER`` of its long side each, as the scoring
    choice's moved good images) whose patches join the SAE's training patches on a fit of fewer than
    `augment_below` images: the same good surface at other phases of the feature grid. They train the SAE only:
    the atlas and the per-position statistics take the images' own patches. The SAE that chooses the scoring
    takes none (training/pipeline.py); the refit after the choice does. 0: none."""
    augment_below: int = 100
    """Fits on at least this many images take no moved copies (0: never any). On 90-image cuts of the shared sets,
    over three seeds, two copies raised mean image AUROC on every set and false alarms on magnetic_tile
    (bench/results/small_train.md); above about 100
    images the patch reservoir is already full of the images' own patches, and copies would only dilute it and
    triple the feature pass."""
    seed: int = 0
    canvas: str = "native"
    """'native': in letterbox and resize mode the fit lowers the canvas side to the largest of 256 / 384 / 512 / 640 (at
    most the config's side) not above the good images' median long side, so the typical image is never upsampled
    (training/canvas.py; the choice is stored in the artifact and shown on the card). 'fixed': the config's side as
    given (`fit --size N`)."""

    def __post_init__(self) -> None:
        if self.canvas not in ("native", "fixed"):
            raise ValueError(f"canvas must be native or fixed, got {self.canvas!r}")
        if self.steps < 1 or self.batch_size < 1 or self.max_patches < 1 or self.image_batch < 1:
            raise ValueError("steps, batch_size, max_patches and image_batch must be >= 1")
        if self.augment < 0 or self.augment_below < 0:
            raise ValueError(f"augment and augment_below must be >= 0, got {self.augment}, {self.augment_below}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.repair < 1 or self.repair_noise < 0:
            raise ValueError(f"repair must be in [0, 1) and repair_noise >= 0, got {self.repair}, "
                             f"{self.repair_noise}")

    def copies(self, n_images: int) -> int:
        """Moved copies of each image a fit on `n_images` images takes."""
        return self.augment if n_images < self.augment_below else 0


class Reservoir:
    """Uniform sample of at most `capacity` rows from a stream (algorithm R, vectorised).

    Each row carries an int32 tag (here: image, canvas, cell row, cell column) so the
    atlas can find the good-image patch a latent fires on most.
    """

    def __init__(self, capacity: int, dim: int, seed: int = 0, tag_dim: int = 4):
        self.data = np.empty((capacity, dim), np.float32)
        self.tags = np.empty((capacity, tag_dim), np.int32)
        self.capacity, self.seen = capacity, 0
        self.rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray, tags: np.ndarray | None = None) -> None:
        tags = np.zeros((len(rows), self.tags.shape[1]), np.int32) if tags is None else tags
        n_fill = min(len(rows), self.capacity - self.seen) if self.seen < self.capacity else 0
        if n_fill:
            self.data[self.seen : self.seen + n_fill] = rows[:n_fill]
            self.tags[self.seen : self.seen + n_fill] = tags[:n_fill]
        rest = rows[n_fill:]
        if len(rest):
            positions = self.seen + n_fill + np.arange(len(rest))  # 0-based stream index
            slots = (self.rng.random(len(rest)) * (positions + 1)).astype(np.int64)
            keep = slots < self.capacity
            self.data[slots[keep]] = rest[keep]  # later rows win ties, as sequential R would
            self.tags[slots[keep]] = tags[n_fill:][keep]
        self.seen += len(rows)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.seen, self.capacity)
        return self.data[:n], self.tags[:n]


class Extracted(NamedTuple):
    patches: np.ndarray
    """(N, C) raw patch features sampled from all good images."""
    tags: np.ndarray
    """(N, 4) int32: index into `paths`, canvas, cell row, cell column of each patch; canvas -1: a moved copy's
    patch (`FitConfig.augment`)."""
    paths: list[Path]
    """Images that decoded, in tag order."""
    pairs: np.ndarray | None
    """(M, 2, C) repair pairs: the feature of a cell under a synthetic defect and the clean feature of the
    same cell (every other image gets one defect); None unless repair training asked for them."""


def extract_reservoir(backbone: nn.Module, config: ModelConfig, paths: Sequence[Path],
                      fit_cfg: FitConfig, device: torch.device) -> Extracted:
    """Stream good images through the backbone into a bounded reservoir of patch features."""
    pre, bb = config.preprocess, config.backbone
    grid = FeatureGrid.of(config)
    reservoir: Reservoir | None = None
    pair_reservoir: Reservoir | None = None
    rng = np.random.default_rng(fit_cfg.seed)
    move_rng = np.random.default_rng(fit_cfg.seed + 2)
    copies = fit_cfg.copies(len(paths))
    used: list[Path] = []
    pending, pending_valid, pending_img, pending_bad = [], [], [], []

    def flush() -> None:
        nonlocal reservoir, pair_reservoir
        n_clean = sum(len(c) for c in pending)
        bad = [c for c, _, _ in pending_bad]
        feats = extract_features(backbone, np.concatenate(pending + bad), bb.mean, bb.std,
                                 config.scoring.pool, device, config.scoring.context).float().cpu().numpy()
        feats, bad_feats = feats[:n_clean], feats[n_clean:]
        if pending_bad:
            clean_rows = np.concatenate([feats[start : start + len(c)][cells] for c, start, cells in pending_bad])
            bad_rows = bad_feats[np.concatenate([cells for _, _, cells in pending_bad])]
            if pair_reservoir is None:
                pair_reservoir = Reservoir(max(1, fit_cfg.max_patches // 4), 2 * feats.shape[-1], fit_cfg.seed + 1)
            if len(bad_rows):
                pair_reservoir.add(np.concatenate([bad_rows, clean_rows], 1))
        valid = np.concatenate(pending_valid)  # (B, h, w) bool
        canvas_image = np.concatenate(pending_img)  # (B, 2): image index, canvas index
        b, gy, gx = np.nonzero(valid)
        rows = feats[b, gy, gx]  # (n_valid, C), padding cells dropped
        tags = np.stack([canvas_image[b, 0], canvas_image[b, 1], gy, gx], 1).astype(np.int32)
        if reservoir is None:
            reservoir = Reservoir(fit_cfg.max_patches, rows.shape[1], fit_cfg.seed)
        reservoir.add(rows, tags)
        pending.clear()
        pending_valid.clear()
        pending_img.clear()
        pending_bad.clear()

    images = iter_images(paths, config.preprocess)
    for path, img in tqdm(images, total=len(paths), desc="features", unit="img", mininterval=2.0):
        if img is None:
            continue
        canvases, layout = make_canvases(img, pre)
        valid = valid_cells(layout, grid)
        if fit_cfg.repair > 0 and len(used) % 2 == 0:
            bad, cells = defect_copy(rng, img, pre, grid, len(used))
            pending_bad.append((bad, sum(len(c) for c in pending), cells & valid))
        pending.append(canvases)
        pending_valid.append(valid)
        pending_img.append(np.stack([np.full(len(canvases), len(used)), np.arange(len(canvases))], 1))
        for _ in range(copies):
            moved, moved_layout = make_canvases(moved_picture(move_rng, img, POSE_JITTER), pre)
            pending.append(moved)
            pending_valid.append(valid_cells(moved_layout, grid))
            pending_img.append(np.stack([np.full(len(moved), len(used)), np.full(len(moved), -1)], 1))
        used.append(path)
        if sum(len(c) for c in pending) >= fit_cfg.image_batch:
            flush()
    if pending:
        flush()
    if reservoir is None:
        raise ValueError("no usable images: every file failed to decode")
    patches, tags = reservoir.sample()
    pairs = None
    if pair_reservoir is not None:
        rows, _ = pair_reservoir.sample()
        pairs = rows.reshape(len(rows), 2, -1)
    return Extracted(patches, tags, used, pairs)


def defect_copy(rng: np.random.Generator, img: Picture, pre: PreprocessConfig, grid: FeatureGrid,
                i: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvases of `img` carrying one synthetic defect, and the (N, cells, cells) feature cells it touches
    (the defect mask carried through the same geometry, any coverage counts)."""
    bad, mask = synthetic_defect(rng, as_float(img.pixels), SYNTHETIC_KINDS[i // 2 % len(SYNTHETIC_KINDS)])
    canvases, _ = make_canvases(Picture(bad, img.original_hw), pre)
    mask_canvases, _ = make_canvases(Picture(np.repeat(mask[..., None].astype(np.float32), 3, 2),
                                             img.original_hw), pre)
    n, c, st = len(mask_canvases), grid.cells, grid.stride
    cover = mask_canvases[..., 0].reshape(n, c, st, c, st).max(axis=(2, 4))
    return canvases, cover > 0.5


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm on (N, d) points."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-6)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def corrupt_batch(x: torch.Tensor, pairs: torch.Tensor | None, fit_cfg: FitConfig,
                  g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of clean standardised patches -> (SAE input, target). The first `repair` share of rows is
    corrupted: half of it (all of it without pairs) by Gaussian feature noise, the rest replaced by
    defect pairs (defect feature in, clean feature of the same cell as target)."""
    n_bad = int(fit_cfg.repair * len(x))
    if n_bad == 0:
        return x, x
    n_pair = n_bad // 2 if pairs is not None and len(pairs) else 0
    inp, target = x.clone(), x.clone()
    n_noise = n_bad - n_pair
    inp[:n_noise] += fit_cfg.repair_noise * torch.randn(n_noise, x.shape[1], generator=g)
    if n_pair:
        chosen = pairs[torch.randint(len(pairs), (n_pair,), generator=g)]
        inp[n_noise:n_bad], target[n_noise:n_bad] = chosen[:, 0], chosen[:, 1]
    return inp, target


def train_sae(x: torch.Tensor, config: ModelConfig, fit_cfg: FitConfig,
              init: TopKSAE | None = None, progress: bool = True,
              pairs: torch.Tensor | None = None) -> tuple[TopKSAE, dict[str, float]]:
    """Train a TopK SAE on standardised patches (N, d); returns it and final statistics. With
    ``fit_cfg.repair`` > 0 part of each batch is corrupted (`pairs`: (M, 2, d) standardised defect/clean
    features) and the loss asks for the clean feature back."""
    torch.manual_seed(fit_cfg.seed)
    sc = config.sae
    d = x.shape[1]
    if init is not None:
        sae = init
    else:
        sae = TopKSAE(d, sc.expansion * d, sc.k, seed=fit_cfg.seed)
        with torch.no_grad():
            sub = x[torch.randperm(len(x))[:20_000]]
            sae.b_pre.copy_(geometric_median(sub))
    sae.train().requires_grad_(True)
    opt = torch.optim.Adam(sae.parameters(), lr=fit_cfg.lr)
    decay_from = int(0.8 * fit_cfg.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (fit_cfg.steps - s) / (fit_cfg.steps - decay_from)))
    since_fired = torch.zeros(sae.n_latents, dtype=torch.long)
    stats: dict[str, float] = {}
    bar = tqdm(range(fit_cfg.steps), desc="sae", disable=not progress, mininterval=2.0)
    g = torch.Generator().manual_seed(fit_cfg.seed)
    for step in bar:
        batch, target = corrupt_batch(x[torch.randint(len(x), (min(fit_cfg.batch_size, len(x)),), generator=g)],
                                      pairs, fit_cfg, g)
        dead = (since_fired > sc.dead_after).nonzero().squeeze(1)
        out, main, aux = training_losses(sae, batch, target, dead, sc.aux_k)
        loss = main + sc.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        schedule.step()
        sae.normalize_decoder()
        fired = torch.zeros(sae.n_latents, dtype=torch.bool)
        fired[out.indices[out.values > 0]] = True
        since_fired = torch.where(fired, 0, since_fired + len(batch))
        if step % 50 == 0 or step == fit_cfg.steps - 1:
            stats = {"loss": float(loss.detach()), "fvu": float(main.detach()),
                     "l0": float((out.values > 0).sum(1).float().mean()),
                     "dead_fraction": len(dead) / sae.n_latents}
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()})
    return sae.eval().requires_grad_(False), stats


def fit_detector(paths: Sequence[Path], config: ModelConfig, fit_cfg: FitConfig,
                 device: torch.device, backbone_weights: str | None = None,
                 init: Detector | None = None, progress: Callable[[str], None] = log.info) -> Detector:
    """Good images -> uncalibrated detector (feature statistics + SAE)."""
    backbone = shared_backbone(config.backbone.name, config.backbone.stages, backbone_weights, str(device))
    t0 = time.perf_counter()
    run = offline_backbone(backbone, config.preprocess.size, str(device))
    progress(f"backbone runs in {run.runtime} for the fit ({time.perf_counter() - t0:.1f}s to prepare)")
    extracted = extract_reservoir(run.module, config, paths, fit_cfg, device)
    raw, used = extracted.patches, len(extracted.paths)
    t_feat = time.perf_counter() - t0
    progress(f"extracted {used} images in {t_feat:.1f}s ({used / t_feat:.1f} img/s); "
             f"reservoir holds {len(raw)} patches of dim {raw.shape[1]}")
    raw_t = torch.from_numpy(raw)
    if init is not None:
        mean, std = init.feat_mean.cpu(), init.feat_std.cpu()
        sae0 = TopKSAE(init.sae.d_in, init.sae.n_latents, init.sae.k)
        sae0.load_state_dict(init.sae.state_dict())
    else:
        mean, std = fit_standardization(raw_t)
        sae0 = None
    x = standardize(raw_t, mean, std)
    pairs = None
    if extracted.pairs is not None:
        pairs = standardize(torch.from_numpy(extracted.pairs), mean, std)
        progress(f"repair training: {len(pairs)} defect/clean feature pairs, {fit_cfg.repair:.0%} of each "
                 f"batch corrupted")
    t1 = time.perf_counter()
    sae, stats = train_sae(x, config, fit_cfg, init=sae0, pairs=pairs)
    t_sae = time.perf_counter() - t1
    progress("sae: " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items()) + f" ({t_sae:.1f}s)")
    t1 = time.perf_counter()
    own = extracted.tags[:, 1] >= 0  # the images' own patches, not their moved copies
    tags, x_own = (extracted.tags, x) if own.all() else (extracted.tags[own], x[torch.from_numpy(own)])
    codes = reservoir_codes(sae, x_own, config.scoring.error)  # one SAE pass: the atlas and the statistics
    atlas = None
    if fit_cfg.atlas_crops:
        from training.atlas import build_atlas

        atlas = build_atlas(codes.values, codes.indices, sae.n_latents, tags, extracted.paths, config,
                            fit_cfg.atlas_crops, fit_cfg.atlas_crop_px)
        progress(f"atlas: {int((atlas.freq > 0).sum())} of {sae.n_latents} latents fire on good patches")
    score_stats = fit_score_stats(codes, tags, FeatureGrid.of(config).cells, sae.n_latents)
    meta = {"fit_stats": stats, "n_fit_images": used, "n_patches": len(raw), "n_moved_patches": int((~own).sum()),
            "n_repair_pairs": 0 if pairs is None else len(pairs),
            "fit_profile_s": {"features": t_feat, "sae": t_sae, "atlas_and_stats": time.perf_counter() - t1},
            "fit_backbone_runtime": run.runtime, "feature_seconds": t_feat,
            "extract_images_per_second": used / max(t_feat, 1e-9),
            "fit_config": dataclasses.asdict(fit_cfg)}
    return Detector(config, backbone, mean, std, sae.to(device), None, meta, atlas=atlas,
                    score_stats=score_stats)


class Codes(NamedTuple):
    values: torch.Tensor
    """(N, k) activations of the k latents active at each reservoir patch."""
    indices: torch.Tensor
    """(N, k) which latents they are."""
    err: torch.Tensor
    """(N,) each patch's reconstruction error."""


@torch.no_grad()
def reservoir_codes(sae: TopKSAE, x: torch.Tensor, error: str, chunk: int = 8192) -> Codes:
    """(N, d) standardised patches -> their active latents and errors (over the features `error` names), by the
    inference path (k atoms)."""
    sae = sae.cpu()
    parts = []
    for i in range(0, len(x), chunk):
        values, indices = sae.encode_topk(x[i : i + chunk])
        parts.append((values, indices, scored_error(x[i : i + chunk], sae.decode_topk(values, indices), error)))
    return Codes(*(torch.cat(p) for p in zip(*parts, strict=True)))


def fit_score_stats(codes: Codes, tags: np.ndarray, n_cells: int, n_latents: int, chunk: int = 8192) -> ScoreStats:
    """Per-position statistics of the patch error and of latent novelty on the good training patches.

    The reservoir keeps each patch's grid position, so this needs the reservoir's codes only and no
    second pass over the images.
    """
    cells = torch.from_numpy(tags[:, 2:4]).long()
    flat = cells[:, 0] * n_cells + cells[:, 1]
    fired = codes.values > 0
    active = torch.zeros(n_cells * n_cells, n_latents, dtype=torch.float64).index_put_(
        (flat[:, None].expand_as(codes.indices)[fired], codes.indices[fired]),
        torch.ones((), dtype=torch.float64), accumulate=True)  # per-position firing counts
    rarity = latent_rarity(active, torch.bincount(flat, minlength=n_cells * n_cells))
    table = rarity.view(n_cells * n_cells, -1)
    v, idx = codes.values, codes.indices
    nov = torch.cat([latent_novelty(v[i : i + chunk], idx[i : i + chunk], table[flat[i : i + chunk]])
                     for i in range(0, len(flat), chunk)])  # the novelty of each good patch
    err_mean, err_std = fit_position_stats(codes.err, cells, n_cells)
    nov_mean, nov_std = fit_position_stats(nov, cells, n_cells)
    return ScoreStats(err_mean, err_std, rarity.view(n_cells, n_cells, -1), nov_mean, nov_std)
