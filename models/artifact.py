"""The model artifact: one safetensors file carrying weights and a JSON description.

Layout of the safetensors ``__metadata__`` (all strings):

    format   "sae-inspect/2"
    config   ModelConfig as JSON
    meta     calibration, provenance, backbone fingerprint, version (JSON)
    digest   sha256 over format, config, meta and every tensor's name, dtype, shape, bytes

Nothing is pickled. Writes go to a temporary file in the same folder, are fsynced,
then renamed over the target, so readers see the old file or the new one, never a
mix. Loading checks the format and the digest before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.files import ARTIFACT_SUFFIX, ArtifactError

__all__ = ["ArtifactError", "FORMAT", "SUFFIX", "atomic_write_bytes", "load_artifact", "save_artifact"]

FORMAT = "sae-inspect/2"  # 2: the calibration states the alpha it guarantees
SUFFIX = ARTIFACT_SUFFIX


def _digest(fmt: str, config: str, meta: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for part in (fmt, config, meta):
        h.update(part.encode())
        h.update(b"\0")
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is never seen half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(path: str | Path, config: dict[str, Any], meta: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> str:
    """Serialise and atomically write an artifact; returns its digest."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    cfg_json = json.dumps(config, sort_keys=True)
    meta_json = json.dumps(meta, sort_keys=True)
    digest = _digest(FORMAT, cfg_json, meta_json, tensors)
    data = st_save(tensors, metadata={"format": FORMAT, "config": cfg_json, "meta": meta_json,
                                      "digest": digest})
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"{path}: folder {path.parent} does not exist")
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot write artifact ({e.strerror or e}); nothing was replaced") from e
    return digest


def _header(data: bytes, path: Path) -> dict[str, Any]:
    if len(data) < 8:
        raise ArtifactError(f"{path}: file too short to be an artifact ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise ArtifactError(f"{path}: truncated or not a safetensors file")
    try:
        return json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise ArtifactError(f"{path}: corrupt header ({e})") from e


def load_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify an artifact -> (config dict, meta dict, tensors)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read artifact ({e.strerror or e})") from e
    md = _header(data, path).get("__metadata__") or {}
    fmt = md.get("format")
    if fmt != FORMAT:
        raise ArtifactError(f"{path}: unsupported artifact format {fmt!r}, this build reads {FORMAT!r}")
    try:
        tensors = st_load(data)
        config, meta = json.loads(md["config"]), json.loads(md["meta"])
    except Exception as e:  # noqa: BLE001 - safetensors/json raise several types
        raise ArtifactError(f"{path}: corrupt artifact ({e})") from e
    if _digest(fmt, md["config"], md["meta"], tensors) != md.get("digest"):
        raise ArtifactError(f"{path}: digest mismatch, the file was modified or damaged")
    return config, meta, tensors
