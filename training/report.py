"""The evaluation report a person reads: ROC, score histograms with the threshold, overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.detector import Detector  # noqa: E402
from models.preprocess import Picture, as_picture, make_canvases  # noqa: E402
from training.metrics import auroc, roc_curve  # noqa: E402


def _pick(details: dict[str, Any], n: int = 4) -> list[tuple[str, int]]:
    s, y, flagged = details["scores"], details["labels"], details["flagged"]
    idx = np.arange(len(s))
    false_alarms = sorted(idx[(~y) & flagged], key=lambda i: -s[i])[:n]
    missed = sorted(idx[y & ~flagged], key=lambda i: s[i])[:n]
    hits = idx[y & flagged]
    typical = list(hits[np.argsort(s[hits])][:: max(1, len(hits) // n)][:n]) if len(hits) else []
    return [("false alarm", i) for i in false_alarms] + [("missed", i) for i in missed] + \
        [("hit", i) for i in typical]


def write_report(details: dict[str, Any], detector: Detector, path: Path) -> None:
    cal = detector.calibration
    s, y = details["scores"], details["labels"]
    picks = _pick(details)
    cols = 4
    rows = 1 + (len(picks) + cols - 1) // cols
    fig = plt.figure(figsize=(4 * cols, 3.6 * rows))
    ax = fig.add_subplot(rows, cols, 1)
    fpr, tpr = roc_curve(y, s)
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    flagged = details["flagged"]  # where the calibrated threshold landed on these labelled images
    ax.plot([flagged[~y].mean()], [flagged[y].mean()], "ro", label="the model's threshold")
    ax.axvline(cal.alpha, color="r", ls=":", lw=0.8, label=f"alpha {cal.alpha:g}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set(title=f"image ROC (AUROC {auroc(y, s):.3f})", xlabel="false-alarm rate", ylabel="recall")
    ax = fig.add_subplot(rows, cols, (2, 3))
    bins = np.linspace(min(s.min(), cal.threshold), max(s.max(), cal.threshold), 50)
    ax.hist(s[~y], bins, alpha=0.6, label="good")
    ax.hist(s[y], bins, alpha=0.6, label="defective")
    ax.axvline(cal.threshold, color="r", label=f"threshold (alpha={cal.alpha:g})")
    tail = details.get("false_alarm_tail_p")
    ax.set(title="image scores" + ("" if tail is None else f": {int(flagged[~y].sum())} of {int((~y).sum())} good "
                                   f"flagged (P = {tail:.2g} if exchangeable with calibration)"),
           xlabel="score", ylabel="images")
    ax.legend()
    for j, (label, i) in enumerate(picks):
        ax = fig.add_subplot(rows, cols, cols + 1 + j)
        canvas, layout = make_canvases(detector.read(details["paths"][i]), detector.config.preprocess)
        _, _, h, w = layout.windows[0]
        o = layout.offset
        work_img = canvas[0, o : o + h, o : o + w] if len(layout.windows) == 1 else canvas[0]
        amap = details["maps"][i] if len(layout.windows) == 1 else details["maps"][i][:h, :w]
        ax.imshow(work_img)
        ax.imshow(amap, cmap="jet", alpha=0.45, vmin=0, vmax=max(cal.threshold, float(amap.max())))
        ax.set_title(f"{label}: {details['kinds'][i]} {s[i]:.3g}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_explanation(image: Picture | np.ndarray, result, regions, detector: Detector, path: Path) -> None:
    """Image + heat map + region boxes, and per region the atlas crops of unusual and expected latents."""
    from matplotlib.patches import Rectangle

    pic = as_picture(image)
    oh, ow = pic.original_hw
    extent = (0, ow, oh, 0)  # pixels and map drawn in original-image coordinates, boxes too
    n_rows = 1 + len(regions)
    fig = plt.figure(figsize=(12, 3.2 * n_rows))
    ax = fig.add_subplot(n_rows, 1, 1)
    ax.imshow(pic.pixels, extent=extent)
    amap = result.anomaly_map
    ax.imshow(amap, cmap="jet", alpha=0.4, vmin=0, vmax=max(result.threshold, float(amap.max())), extent=extent)
    for i, e in enumerate(regions, 1):
        x, y, w, h = e.box
        ax.add_patch(Rectangle((x, y), w, h, fill=False, color="red", lw=2))
        ax.text(x, y - 3, str(i), color="red", fontsize=12, weight="bold")
    verdict = "ANOMALOUS" if result.anomalous else "good"
    ax.set_title(f"{verdict}: score {result.score:.4g} (threshold {result.threshold:.4g}, p = {result.p_value:.3g})")
    ax.axis("off")
    atlas = detector.atlas
    for i, e in enumerate(regions, 1):
        row = fig.add_subplot(n_rows, 1, 1 + i)
        row.axis("off")
        what = "looks like nothing in good products" if e.kind == "novel" else \
            "looks like a different part of good products"
        row.set_title(f"region {i}: {100 * e.error_share:.0f}% of the error; {what} "
                      f"(novelty {e.novelty:.2f}, misplacement {e.misplacement:.2f})", fontsize=10)
        tiles = [(f"#{u.latent}{' new' if u.never_seen else ''}", atlas.crops[u.latent, 0].numpy()) for u in e.unusual]
        tiles += [(f"#{j} expected", atlas.crops[j, 0].numpy()) for j, _ in e.expected]
        for k, (label, crop) in enumerate(tiles):
            sub = row.inset_axes([k / max(len(tiles), 10), 0.05, 0.9 / max(len(tiles), 10), 0.75])
            sub.imshow(crop)
            sub.set_title(label, fontsize=7)
            sub.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
