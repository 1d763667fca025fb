"""Detection metrics as pure numpy functions: AUROC, ROC curve, AUPRO (MVTec AD convention)."""

from __future__ import annotations

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


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3, steps: int = 300) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr`.

    Each connected ground-truth region counts equally, whatever its size (Bergmann et
    al., MVTec AD). FPR is measured on all defect-free pixels of all images.
    """
    normal, regions = [], []
    for mask, amap in zip(masks, maps, strict=True):
        m = mask > 0
        normal.append(amap[~m])
        if m.any():
            n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            regions.extend(np.sort(amap[labels == i]) for i in range(1, n))
    if not regions:
        raise ValueError("AUPRO needs at least one defect region")
    normal_sorted = np.sort(np.concatenate(normal))
    fpr_targets = np.linspace(0, max_fpr, steps)
    thresholds = np.quantile(normal_sorted, 1 - fpr_targets)

    def above(sorted_vals: np.ndarray) -> np.ndarray:  # fraction of values > each threshold
        return 1 - np.searchsorted(sorted_vals, thresholds, side="right") / len(sorted_vals)

    fpr = above(normal_sorted)
    pro = np.mean([above(r) for r in regions], axis=0)
    fpr, pro = np.r_[fpr, max_fpr], np.r_[pro, np.interp(max_fpr, fpr, pro)]
    keep = fpr <= max_fpr
    order = np.argsort(fpr[keep])
    return float(np.trapezoid(pro[keep][order], fpr[keep][order]) / max_fpr)
