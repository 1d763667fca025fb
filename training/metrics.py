"""Detection metrics as pure numpy functions: AUROC, ROC curve, AUPRO (MVTec AD convention)."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(len(x))
    ranks[order] = avg[group]
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative samples")
    r = _average_ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    y = labels[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def best_recall_at_far(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    """The largest recall of any threshold (flag ``score > t``) that flags at most a `far` share of the
    negatives: what a threshold chosen with the labels in hand would catch at that false-alarm rate.
    A threshold set from good images alone (split-conformal) can only match it by luck; when it falls
    short, more calibration images help, and when this too is short, only a better score does."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    neg = np.sort(scores[~labels])[::-1]
    if not labels.any() or len(neg) == 0:
        raise ValueError("best_recall_at_far needs both positive and negative samples")
    if not 0 <= far <= 1:
        raise ValueError(f"far must be in [0, 1], got {far}")
    allowed = int(np.floor(far * len(neg) + 1e-9))  # false alarms the rate permits
    t = neg[allowed] if allowed < len(neg) else -np.inf  # ties at t stay unflagged: never above the rate
    return float((scores[labels] > t).mean())


PIXEL_SAMPLE = 2_000_000
"""Pixels drawn (seeded) to place the pixel metrics' bins and thresholds; the counts in them are exact, over every
pixel, one map at a time: memory stays at a sample and a few histograms however many maps there are (the exact
sort of every pixel took 22.6 GB on deeppcb's 750 test maps at 640 px)."""
PIXEL_BINS = 16_384
"""Equal-share bins of the pixel AUROC (``pixel_auroc``: at most 0.5 / PIXEL_BINS from the exact value when the
negative pixels are the many)."""


def _sample(maps: list[np.ndarray], n: int, exclude: list[np.ndarray] | None = None, seed: int = 0) -> np.ndarray:
    """About n of the maps' values, drawn in proportion to their sizes (all of them when they hold fewer), leaving
    out the pixels where `exclude` is non-zero (the defect masks, for a sample of the defect-free pixels)."""
    total = sum(m.size for m in maps)
    rng = np.random.default_rng(seed)
    out = []
    for i, m in enumerate(maps):
        idx = np.arange(m.size) if total <= n else rng.integers(0, m.size, max(1, round(n * m.size / total)))
        keep = m.ravel()[idx]
        out.append(keep if exclude is None else keep[~(np.asarray(exclude[i]) > 0).ravel()[idx]])
    return np.concatenate(out)


class PixelAuroc(NamedTuple):
    value: float
    max_error: float
    """Bound on |value - exact AUROC|: pairs of a positive and a negative pixel in one bin count half."""


def pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray], bins: int = PIXEL_BINS) -> PixelAuroc:
    """AUROC of every map pixel against its mask, in bounded memory: bins at quantiles of a pixel sample, exact
    per-bin counts of positive and negative pixels map by map, the Mann-Whitney sum over bins (ties within a bin
    counted half, hence `max_error`)."""
    edges = np.unique(np.quantile(_sample(maps, PIXEL_SAMPLE), np.linspace(0, 1, bins + 1)[1:-1]))
    pos, neg = np.zeros(len(edges) + 1), np.zeros(len(edges) + 1)
    for mask, amap in zip(masks, maps, strict=True):
        b = np.searchsorted(edges, amap.ravel(), side="left")  # bin k holds values in (edges[k-1], edges[k]]
        m = np.asarray(mask, bool).ravel()
        pos += np.bincount(b[m], minlength=len(pos))
        neg += np.bincount(b[~m], minlength=len(neg))
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative samples")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return PixelAuroc(float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)),
                      float(0.5 * (pos * neg).sum() / (n_pos * n_neg)))


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3, steps: int = 300) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr`.

    Each connected ground-truth region counts equally, whatever its size (Bergmann et
    al., MVTec AD). FPR is measured on all defect-free pixels of all images: `steps` thresholds at quantiles of a
    sample of them (all of them up to PIXEL_SAMPLE), then the exact FPR and overlaps at those thresholds, map by
    map, so that memory does not grow with the number of maps.
    """
    thresholds = np.quantile(_sample(maps, PIXEL_SAMPLE, masks), np.linspace(1 - max_fpr, 1, steps))  # ascending
    above_normal, n_normal, pro, n_regions = np.zeros(steps), 0, np.zeros(steps), 0
    for mask, amap in zip(masks, maps, strict=True):
        m = np.asarray(mask) > 0
        free = amap[~m]
        # defect-free values above each threshold: those whose insertion point lies beyond it
        above_normal += np.cumsum(np.bincount(np.searchsorted(thresholds, free, side="left"),
                                              minlength=steps + 1)[::-1])[::-1][1:]
        n_normal += free.size
        if m.any():
            n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            for i in range(1, n):
                region = np.sort(amap[labels == i])
                pro += 1 - np.searchsorted(region, thresholds, side="right") / len(region)
                n_regions += 1
    if not n_regions:
        raise ValueError("AUPRO needs at least one defect region")
    fpr, pro = above_normal / n_normal, pro / n_regions
    fpr, pro = np.r_[fpr, max_fpr], np.r_[pro, np.interp(max_fpr, fpr[::-1], pro[::-1])]
    keep = fpr <= max_fpr
    order = np.argsort(fpr[keep])
    return float(np.trapezoid(pro[keep][order], fpr[keep][order]) / max_fpr)
