"""Decision thresholds from held-out good images (split-conformal) and labelled-defect reports."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from models.detector import Detector
from models.inspection import Calibration
from training.data import iter_images

log = logging.getLogger(__name__)
MAX_PIXEL_SAMPLE = 2_000_000
FEW_CALIBRATION_PARTS = 10
"""Below this many parts in the calibration split the fit warns that new parts may alarm more often than alpha:
its images stand for only a few parts, and their largest score sits low for a new one. Measured on magnetic_tile cut
to 90 good images (bench.small_train, three seeds each): calibrations of 5 parts flagged 7.4 % of test/good at a
card alpha of 2.8 %, of 10 parts 6.6 % at 3.2 %, of 30 single images 4.3 % at 3.2 % (README, "Few good images")."""


def score_files(detector: Detector, paths: Sequence[Path], desc: str = "scoring",
                batch: int = 8) -> tuple[list[Path], np.ndarray, list[np.ndarray]]:
    """Score image files -> (paths that decoded, image scores, work maps); bad files are skipped."""
    kept, scores, maps, pending = [], [], [], []

    def flush() -> None:
        for (p, _), (work_map, _) in zip(pending, detector.maps([img for _, img in pending]), strict=True):
            kept.append(p)
            scores.append(detector.score_map(work_map))
            maps.append(work_map)
        pending.clear()

    images = iter_images(paths, detector.config.preprocess)
    for p, img in tqdm(images, total=len(paths), desc=desc, unit="img", mininterval=2.0):
        if img is not None:
            pending.append((p, img))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return kept, np.asarray(scores, np.float64), maps


@dataclass(frozen=True)
class CalibrationConfig:
    alpha: float = 0.01
    """Target false-alarm rate of the image decision (split-conformal)."""
    pixel_quantile: float = 0.999
    """Quantile of good calibration-image map pixels that sets the region threshold."""
    fraction: float = 0.2
    """Share of the good images held out for calibration (never used to fit the SAE)."""
    min_count: int = 30
    """At least this many calibration images (at most half of all images)."""
    seed: int = 0
    """Seed of the fit / selection / calibration split."""
    select_count: int = 48
    """Good images held out for the scoring choice (``training.select``): they neither fit the SAE and its
    statistics nor calibrate, so the choice is made on images nothing it chooses between has seen."""
    refit_below: int = 100
    """When the fit split holds fewer images than this, the selection images join it once the scoring is chosen
    and the SAE and its statistics are fitted again on both (the choice stays; calibration images still train
    nothing). On few images every image counts: the shared sets cut to 90 good images leave 35 to the SAE; fitted
    again on 56, image AUROC 0.736 -> 0.779 (magnetic_tile), 0.859 -> 0.885 (deeppcb), 0.925 -> 0.919
    (bsdata_pitting), 0.914 -> 0.893 (tire): mean 0.858 -> 0.869 on seed 0; over fit and split seeds 0-2 mean 0.845
    -> 0.867, ahead in 9 of 12 seed pairs, bsdata_pitting and tire level (bench/results/small_train.md). Above
    it the selection's 48 add little and the second SAE fit would cost a whole SAE training. 0: never."""
    groups: str = "runs:8"
    """How images group into physical parts, so that no part lands in two splits and the calibration
    covers *new* parts: ``runs:K`` (runs of K consecutive file names in each folder, at most 1/12 of
    the images per run: shots taken one after another, often of one part, stay together), ``none``
    (every image its own part), ``folder`` (the folder holding the file), ``pattern:REGEX`` (the first
    match of REGEX in the file name, e.g. ``pattern:^[^_]+``), or ``file:PATH`` (a CSV of ``file
    name,group`` lines). The default is
    ``runs:8`` because a random draw of single images leaks: on ``tire`` half the good images have
    their nearest neighbour (backbone features) within two places in file order, and new parts lie
    1.7 x farther from the training images than a held-out training image does."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.pixel_quantile < 1:
            raise ValueError(f"pixel_quantile must be in (0, 1), got {self.pixel_quantile}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"calibration fraction must be in (0, 1), got {self.fraction}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.select_count < 0 or self.refit_below < 0:
            raise ValueError(f"select_count and refit_below must be >= 0, got {self.select_count}, "
                             f"{self.refit_below}")
        kind = self.groups.split(":", 1)[0]
        if kind not in ("none", "folder", "pattern", "file", "runs") or (
                kind in ("pattern", "file", "runs") and ":" not in self.groups):
            raise ValueError(f"groups must be runs:K, none, folder, pattern:REGEX or file:PATH, got {self.groups!r}")
        if kind == "runs" and not (self.groups[5:].isdigit() and int(self.groups[5:]) >= 1):
            raise ValueError(f"groups runs:K needs a whole number K >= 1, got {self.groups!r}")
        if kind == "pattern":
            try:
                re.compile(self.groups.split(":", 1)[1])
            except re.error as e:
                raise ValueError(f"groups pattern {self.groups!r} is not a regular expression: {e}") from None


class Split(NamedTuple):
    fit: list[Path]
    """Fit the SAE and its scoring statistics."""
    select: list[Path]
    """Choose the scoring (held out from both other splits)."""
    calibrate: list[Path]
    """Set the conformal threshold."""
    n_groups: int
    """Parts (groups) the images came in."""
    calibration_parts: int
    """Parts the calibration split holds (its images stand for this many parts, not for as many images)."""


def image_groups(paths: Sequence[Path], spec: str) -> list[str]:
    """The group (physical part) of each image, by ``CalibrationConfig.groups``."""
    kind, _, arg = spec.partition(":")
    if kind == "none":
        return [str(p) for p in paths]
    if kind == "folder":
        return [str(p.parent) for p in paths]
    if kind == "runs":  # at most len/12 per run, so that a small set still gives every split parts
        k = max(1, min(int(arg), len(paths) // 12))
        rank: dict[Path, int] = {}
        seen: dict[Path, int] = {}
        for p in sorted(paths, key=lambda q: (str(q.parent), q.name)):
            rank[p] = seen[p.parent] = seen.get(p.parent, -1) + 1
        return [f"{p.parent}#{rank[p] // k}" for p in paths]
    if kind == "pattern":
        rx = re.compile(arg)
        found = [rx.search(p.name) for p in paths]
        missing = [p.name for p, m in zip(paths, found, strict=True) if m is None]
        if missing:
            raise ValueError(f"groups pattern {arg!r} matches no part of {len(missing)} file names "
                             f"(first: {missing[0]})")
        return [m.group(0) for m in found]
    table: dict[str, str] = {}
    try:
        lines = Path(arg).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{arg}: cannot read the group file ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        if line.strip() and not line.startswith("#"):
            name, sep, group = line.partition(",")
            if not sep or not group.strip():
                raise ValueError(f"{arg}:{n}: expected 'file name,group', got {line!r}")
            table[name.strip()] = group.strip()
    missing = [p.name for p in paths if p.name not in table]
    if missing:
        raise ValueError(f"{arg}: no group for {len(missing)} images (first: {missing[0]})")
    return [table[p.name] for p in paths]


def split_images(paths: Sequence[Path], cfg: CalibrationConfig) -> Split:
    """Seeded split of good images into fit / selection / calibration, whole groups at a time (a part
    photographed several times lands in one split only). Calibration never trains the SAE; selection
    neither trains nor calibrates."""
    if len(paths) < 2:
        raise ValueError(f"need at least 2 good images to fit and calibrate, found {len(paths)}")
    groups = image_groups(paths, cfg.groups)
    members: dict[str, list[Path]] = {}
    for p, g in zip(paths, groups, strict=True):
        members.setdefault(g, []).append(p)
    if len(members) < 3:
        raise ValueError(f"grouping {cfg.groups!r} puts the {len(paths)} images into {len(members)} part(s): "
                         "fit, selection and calibration need parts of their own; use another --calib-groups")
    n_cal = min(max(cfg.min_count, math.ceil(cfg.fraction * len(paths))), len(paths) // 2)
    n_sel = min(cfg.select_count, (len(paths) - n_cal) // 4)  # the SAE keeps most of what calibration leaves
    names = sorted(members)
    order = [names[i] for i in np.random.default_rng(cfg.seed).permutation(len(names))]
    cal, sel, fit = [], [], []
    cal_parts = 0
    for g in order:
        target = cal if len(cal) < n_cal else sel if len(sel) < n_sel else fit
        target.extend(members[g])
        cal_parts += target is cal
    if not fit:
        raise ValueError(f"grouping {cfg.groups!r}: nothing left to fit the SAE after calibration and selection")
    return Split(sorted(fit), sorted(sel), sorted(cal), len(members), cal_parts)


def calibrate(detector: Detector, paths: Sequence[Path], cfg: CalibrationConfig) -> Calibration:
    """Split-conformal image threshold + pixel threshold from good calibration images."""
    alpha, pixel_quantile, seed = cfg.alpha, cfg.pixel_quantile, cfg.seed
    _, scores, maps = score_files(detector, paths, desc="calibration")
    if len(scores) == 0:
        raise ValueError("no usable calibration images")
    if not np.isfinite(scores).all():
        raise ValueError("a calibration image gave a non-finite score: the model is broken; refusing to calibrate")
    pixels = np.concatenate([m.ravel() for m in maps])
    if len(pixels) > MAX_PIXEL_SAMPLE:
        pixels = np.random.default_rng(seed).choice(pixels, MAX_PIXEL_SAMPLE, replace=False)
    pixel_threshold = float(np.quantile(pixels, pixel_quantile))
    calibration = Calibration.from_scores(scores, alpha, pixel_threshold, pixel_quantile)
    n = len(scores)
    if alpha < calibration.min_alpha:
        log.warning(
            "only %d calibration images: split-conformal calibration needs at least %d for alpha=%g. "
            "The model guarantees alpha = 1/(n+1) = %.4g instead, on average over calibration draws (threshold = "
            "the largest calibration score; one model's own rate stays under %.3g with 90 %% confidence); its "
            "card and metrics state that. Add good images or raise --alpha.",
            n, int(np.ceil(1 / alpha)) - 1, alpha, calibration.alpha, calibration.false_alarm_rate_90)
    return calibration


def f1_optimal(good: np.ndarray, bad: np.ndarray) -> dict[str, float]:
    """Threshold maximising F1 (defect = positive) over labelled scores, with its precision/recall."""
    scores = np.concatenate([good, bad])
    labels = np.concatenate([np.zeros(len(good)), np.ones(len(bad))])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    precision = tp / (tp + fp)
    recall = tp / max(len(bad), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    last = np.r_[s[1:] != s[:-1], True]  # only cut between distinct scores
    i = int(np.argmax(np.where(last, f1, -1)))
    threshold = float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i])
    return {"threshold": threshold, "f1": float(f1[i]), "precision": float(precision[i]),
            "recall": float(recall[i])}
