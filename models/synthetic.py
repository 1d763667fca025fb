"""Generated inspection data: a brushed-metal part, good or with injected defects.

Used by the demo, the tests and the benchmarks' smoke runs; no data is downloaded.
A good part is a textured plate (anisotropic noise, random lighting, a few machined
holes) on a dark background; a defective one adds a scratch, a spot or a crack, and
comes with its pixel mask.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("scratch", "spot", "crack")


def good_part(rng: np.random.Generator, height: int = 192, width: int = 320) -> np.ndarray:
    """(H, W, 3) uint8 image of a defect-free part."""
    noise = rng.normal(0, 1, (height, width)).astype(np.float32)
    brushed = cv2.GaussianBlur(noise, (0, 0), sigmaX=6.0, sigmaY=0.8)
    brushed /= brushed.std() + 1e-6
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.08 * (xx / width - 0.5) * rng.uniform(-1, 1) + 0.06 * (yy / height - 0.5) * rng.uniform(-1, 1)
    plate = 0.55 + light + 0.05 * brushed + 0.02 * grain
    m = max(4, int(0.06 * min(height, width)))
    body = np.zeros((height, width), np.uint8)
    cv2.rectangle(body, (m, m), (width - m, height - m), 1, -1)
    img = np.where(body > 0, plate, 0.12 + 0.01 * grain)
    r = max(3, int(0.05 * min(height, width)))
    for cx in (3 * m, width - 3 * m):  # two machined holes at fixed places, as on a real part
        cv2.circle(img, (cx, height // 2), r, 0.15, -1)
        cv2.circle(img, (cx, height // 2), r, 0.75, 1)
    tint = np.array([1.0, 0.98, 0.95], np.float32) * rng.uniform(0.97, 1.03)
    rgb = np.clip(img[..., None] * tint, 0, 1)
    return (rgb * 255).astype(np.uint8)


def free_pose_part(rng: np.random.Generator, height: int = 192, width: int = 320) -> np.ndarray:
    """A good part lying in free pose: rotated by any angle and shifted on a dark field (as tyre treads or
    loose parts are photographed), so an image position does not always show the same part of it."""
    part = good_part(rng, height, width)
    m = cv2.getRotationMatrix2D((width / 2, height / 2), float(rng.uniform(0, 360)), float(rng.uniform(0.6, 0.8)))
    m[:, 2] += rng.uniform(-0.15, 0.15, 2) * (width, height)
    return cv2.warpAffine(part, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(31, 30, 30))


def marked_part(rng: np.random.Generator, height: int = 192, width: int = 320) -> np.ndarray:
    """A good part in fixed pose with a marking zone on its left 40 % whose content changes from part to
    part (a printed serial number, a date code): strong random strokes there on every good part. Raw
    reconstruction error is high in the zone on every good part, so a defect elsewhere is judged against
    the marking unless the error is normalised by position."""
    img = good_part(rng, height, width)
    m = max(4, int(0.06 * min(height, width)))
    x0, x1 = 2 * m, int(0.4 * width)
    for _ in range(int(rng.integers(10, 16))):
        p0 = (int(rng.integers(x0, x1)), int(rng.integers(2 * m, height - 2 * m)))
        p1 = (int(np.clip(p0[0] + rng.integers(-25, 26), x0, x1)), int(np.clip(p0[1] + rng.integers(-25, 26),
                                                                                 2 * m, height - 2 * m)))
        shade = int(rng.choice([20, 235]))
        cv2.line(img, p0, p1, (shade, shade, shade), int(rng.integers(2, 5)))
    return img


PARTS = {"plate": good_part, "free_pose": free_pose_part, "marked": marked_part}


def add_defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Inject one defect of `kind` inside the part -> (image, mask uint8 0/255)."""
    h, w = img.shape[:2]
    out = img.astype(np.float32) / 255
    mask = np.zeros((h, w), np.uint8)
    cx = int(rng.uniform(0.25, 0.75) * w)
    cy = int(rng.uniform(0.25, 0.75) * h)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.15, 0.3) * min(h, w)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        p0, p1 = (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy))
        cv2.line(mask, p0, p1, 255, 2)
        shade = rng.choice([0.15, 0.95])
    elif kind == "spot":
        r = int(rng.uniform(0.03, 0.06) * min(h, w))
        cv2.ellipse(mask, (cx, cy), (r, int(r * rng.uniform(0.6, 1.0))), rng.uniform(0, 180), 0, 360, 255, -1)
        shade = 0.2
    elif kind == "crack":
        pts = [(cx, cy)]
        for _ in range(6):
            x, y = pts[-1]
            pts.append((int(x + rng.uniform(4, 10)), int(y + rng.uniform(-6, 6))))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 255, 1)
        shade = 0.05
    else:
        raise ValueError(f"unknown defect kind {kind!r}, choose from {DEFECTS}")
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.7)[..., None]
    out = out * (1 - alpha) + shade * alpha
    return (np.clip(out, 0, 1) * 255).astype(np.uint8), mask


def write_dataset(root: str | Path, n_train: int = 60, n_test_good: int = 10, n_test_bad: int = 10,
                  seed: int = 0, height: int = 192, width: int = 320, part: str = "plate") -> Path:
    """Write an MVTec-layout dataset of generated parts (`part` one of PARTS) under `root`; returns `root`."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}, choose from {sorted(PARTS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    make = PARTS[part]
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:04d}.png"), make(rng, height, width)[..., ::-1])
    for i in range(n_test_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:04d}.png"), make(rng, height, width)[..., ::-1])
    for j in range(n_test_bad):
        kind = DEFECTS[j % len(DEFECTS)]
        img, mask = add_defect(rng, make(rng, height, width), kind)
        (root / "test" / kind).mkdir(exist_ok=True)
        (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "test" / kind / f"{j:04d}.png"), img[..., ::-1])
        cv2.imwrite(str(root / "ground_truth" / kind / f"{j:04d}_mask.png"), mask)
    return root
