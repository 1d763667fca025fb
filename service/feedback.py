"""Operator feedback that becomes training data.

Opt-in (``SAE_INSPECT_FEEDBACK_DIR``): the service keeps recent uploads per model in a bounded ring
on disk (``<dir>/.ring/<model>/``: the image bytes as uploaded and a JSON side file with the
verdict), at most ``feedback_max_bytes`` in all and none older than ``feedback_max_age_s``. Writes
run on one background thread behind a bounded queue: an inspection never waits for the disk, and
a full queue or a full disk drops the copy (counted), never the inspection.

``POST /v1/models/{name}/feedback`` files a kept image by its ``image_id`` (the request id of the
inspection) under ``<dir>/<model>/good/`` (a false alarm: training data for the next fit) or
``<dir>/<model>/defect/`` (a confirmed defect: test data), with a JSON side file: verdict, score,
model version, inspection time, label, time of the label, optional box.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
MAX_PENDING_WRITES = 64
MAX_PENDING_BYTES = 64 * 2**20
"""Uploads waiting for the disk, at most: beyond either bound a copy is dropped (counted), so a slow disk
costs at most this much memory."""
_ID_RE = re.compile(r"^[0-9a-f]{32}(\.[0-9]{1,3})?$")
_SIGNATURES = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"),
               (b"MM\x00*", ".tif"), (b"GIF8", ".gif"), (b"RIFF", ".webp"))


def suffix_of(data: bytes) -> str:
    return next((s for sig, s in _SIGNATURES if data.startswith(sig)), ".bin")


def valid_image_id(image_id: str) -> bool:
    return bool(_ID_RE.fullmatch(image_id))


class NotKept(LookupError):
    """No kept image for this id (never kept, evicted by size or age, or already filed)."""


@dataclass
class _Entry:
    path: Path
    size: int
    at: float


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FeedbackStore:
    def __init__(self, root: Path, max_bytes: int, max_age_s: float, on_write=lambda outcome: None):
        self.root, self.max_bytes, self.max_age_s = Path(root), max_bytes, max_age_s
        self.ring_root = self.root / ".ring"
        self._on_write = on_write
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self._pending = self._pending_bytes = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="feedback-ring")
        self._scan()

    def _scan(self) -> None:
        """Adopt what an earlier process kept (oldest first), so the ring's bounds hold across restarts."""
        found = []
        for side in self.ring_root.glob("*/*.json") if self.ring_root.is_dir() else []:
            img = next((p for p in side.parent.glob(side.stem + ".*") if p.suffix not in (".json", ".tmp")), None)
            if img is not None:
                st = img.stat()
                found.append((st.st_mtime, side.parent.name, side.stem, img, st.st_size + side.stat().st_size))
        for at, model, image_id, img, size in sorted(found):
            self._entries[(model, image_id)] = _Entry(img, size, at)
            self._bytes += size
        self._evict(time.time())

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def keep(self, model: str, image_id: str, data: bytes, record: dict) -> None:
        """Queue a copy of an inspected upload; never blocks, never raises."""
        with self._lock:
            if (self._pending >= MAX_PENDING_WRITES or self._pending_bytes + len(data) > MAX_PENDING_BYTES
                    or len(data) > self.max_bytes):
                self._on_write("dropped")
                return
            self._pending += 1
            self._pending_bytes += len(data)
        self._pool.submit(self._write, model, image_id, data, record)

    def _write(self, model: str, image_id: str, data: bytes, record: dict) -> None:
        try:
            folder = self.ring_root / model
            folder.mkdir(parents=True, exist_ok=True)
            img = folder / (image_id + suffix_of(data))
            side = folder / (image_id + ".json")
            text = json.dumps(record).encode()
            _atomic_write(img, data)
            _atomic_write(side, text)
            now = time.time()
            with self._lock:
                self._entries[(model, image_id)] = _Entry(img, len(data) + len(text), now)
                self._bytes += len(data) + len(text)
            self._evict(now)
            self._on_write("kept")
        except OSError as e:  # a full or read-only disk loses the copy, never the inspection
            log.warning("feedback ring: could not keep %s/%s: %s", model, image_id, e.strerror or e)
            self._on_write("failed")
        finally:
            with self._lock:
                self._pending -= 1
                self._pending_bytes -= len(data)

    def _evict(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._entries:
                    return
                key, oldest = next(iter(self._entries.items()))
                if self._bytes <= self.max_bytes and now - oldest.at <= self.max_age_s:
                    return
                del self._entries[key]
                self._bytes -= oldest.size
            for p in (oldest.path, oldest.path.with_suffix(".json")):
                p.unlink(missing_ok=True)

    def file(self, model: str, image_id: str, label: str, box: list[int] | None) -> dict:
        """Move a kept image into ``<root>/<model>/<label>/`` with its side file -> the side file's record."""
        self._evict(time.time())
        with self._lock:
            entry = self._entries.pop((model, image_id), None)
            if entry is not None:
                self._bytes -= entry.size
        if entry is None or not entry.path.exists():
            raise NotKept(f"no kept image {image_id!r} for model {model!r}: it was never kept (feedback off, "
                          "a batch dropped under load), is older than the ring keeps, or was filed already")
        side = entry.path.with_suffix(".json")
        record = json.loads(side.read_text())
        record.update(label=label, labelled_at=time.time(), box=box)
        dest = self.root / model / label
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / entry.path.name
        os.replace(entry.path, target)
        _atomic_write(dest / side.name, json.dumps(record, indent=1).encode())
        side.unlink(missing_ok=True)
        return {**record, "file": f"{model}/{label}/{target.name}"}
