"""Writing an artifact so that a bad file never replaces a good one."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from models.artifact import ArtifactError
from models.detector import Detector

log = logging.getLogger(__name__)


def save_verified(det: Detector, out: Path, probe: Path) -> None:
    """Write `det` next to `out`, reload it, check it scores `probe` identically, then swap it in.

    The previous artifact at `out`, if any, is kept as `<out>.prev` for rollback.
    A failure at any step leaves `out` exactly as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    candidate = out.with_name(f".{out.name}.candidate")
    try:
        det.save(candidate)
        reloaded = Detector.from_artifact(candidate, str(det.device))
        img = det.read(probe)
        a, b = det.inspect([img])[0].score, reloaded.inspect([img])[0].score
        if a != b:
            raise ArtifactError(f"{candidate}: reloaded artifact scores {b} instead of {a}")
        if out.exists():
            shutil.copy2(out, out.with_name(out.name + ".prev"))
        os.replace(candidate, out)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
