"""Finding and streaming images: plain folders of good images, or MVTec-layout category folders."""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from models.config import PreprocessConfig
from models.imageio import ImageDecodeError, list_images, read_image
from models.preprocess import Picture

log = logging.getLogger(__name__)


def good_images(folders: Sequence[str | Path]) -> list[Path]:
    """All images under the given folders; an MVTec category folder contributes its train/good."""
    paths: list[Path] = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder}: not a folder")
        root = folder / "train" / "good" if (folder / "train" / "good").is_dir() else folder
        found = list_images(root)
        if not found:
            raise ValueError(f"{root}: no images found (looked for png, jpg, bmp, tif, webp, gif, recursively)")
        paths.extend(found)
    return sorted(set(paths))


def fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over file names and sizes: identifies the training set without rereading it."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TestItem:
    path: Path
    defect: str
    """'good' or the defect folder name."""
    mask: Path | None


def mvtec_test_set(root: str | Path) -> list[TestItem]:
    """test/<type>/* images with ground_truth/<type>/<stem>_mask.png where present. A folder without
    test/ whose sub-folders are good/ and defect kinds (the service's feedback folder of one model:
    good/ and defect/) is read the same way, without masks."""
    root = Path(root)
    test = root / "test" if (root / "test").is_dir() else root
    if not (test / "good").is_dir():
        raise ValueError(f"{root}: not an MVTec-layout folder (expected test/good and test/<defect>) nor a "
                         "feedback folder (good/ and defect/)")
    items = []
    for sub in sorted(p for p in test.iterdir() if p.is_dir()):
        for img in list_images(sub):
            mask = root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
            items.append(TestItem(img, sub.name, mask if mask.is_file() else None))
    if not any(i.defect != "good" for i in items):
        raise ValueError(f"{root}: test/ holds no defect folders")
    return items


def iter_images(paths: Sequence[Path], preprocess: PreprocessConfig, workers: int = 2,
                ahead: int = 16) -> Iterator[tuple[Path, Picture | None]]:
    """Decode files for a model's geometry in the background, at most `ahead` files in memory at once.

    Unreadable files yield None with a warning naming them.
    """
    def load(p: Path) -> Picture | None:
        try:
            return read_image(p, preprocess)
        except ImageDecodeError as e:
            log.warning("skipping %s", e)
            return None

    with ThreadPoolExecutor(workers) as pool:
        window: deque = deque()
        for p in paths:
            window.append((p, pool.submit(load, p)))
            if len(window) >= ahead:
                q, fut = window.popleft()
                yield q, fut.result()
        while window:
            q, fut = window.popleft()
            yield q, fut.result()
