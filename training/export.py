"""`sae-inspect export`: one ONNX file per model, validated against PyTorch before it is written.

The scoring network (``models.net.ScoringNet``, the module ``Detector`` runs) is traced with
``torch.onnx.export`` (dynamo exporter, dynamic batch), sealed with the metadata of
``models.portable``, and run with ONNX Runtime on the validation images beside PyTorch. If
any image's score differs by more than ``tolerance`` x the score scale
(``models.decision.score_scale``), nothing is written and the error names the worst image.
The file is written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.artifact import ArtifactError, atomic_write_bytes
from models.decision import score_scale
from models.detector import Detector
from models.imageio import ImageDecodeError
from models.net import ScoringNet
from models.portable import INPUT, OUTPUT, PortableDetector, export_metadata, seal

log = logging.getLogger(__name__)
TOLERANCE = 1e-3
"""Largest accepted |score(ONNX) - score(PyTorch)| as a fraction of the score scale (``score_scale``:
|threshold|, or the calibration scores' spread where larger, so a zero or negative threshold is safe)."""


class _MapsOnly(torch.nn.Module):
    def __init__(self, net: ScoringNet):
        super().__init__()
        self.net = net

    def forward(self, canvases: torch.Tensor) -> torch.Tensor:
        return self.net(canvases)[0]


def onnx_bytes(det: Detector) -> bytes:
    """The detector's scoring network as an unsealed ONNX model (float32, dynamic batch, one file)."""
    net = ScoringNet(det.config, det.backbone, det.feat_mean, det.feat_std, det.sae, det.score_stats).eval()
    net.portable = True  # decode with ops every runtime has (tested equal to the default decode)
    size = det.config.preprocess.size
    example = torch.rand(2, size, size, 3, device=det.device)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(_MapsOnly(net).to(det.device).eval(), (example,), dynamo=True, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes={"canvases": {0: torch.export.Dim("batch")}},
                                    verbose=False)
    return program.model_proto.SerializeToString()


def validation_sample(paths: Sequence[Path], n: int) -> list[Path]:
    """At most `n` images spread evenly over `paths`, to validate an export on."""
    return list(paths[:: max(1, len(paths) // n)][:n])


def export_onnx(det: Detector, artifact: Path, out: Path, images: Sequence[Path],
                tolerance: float = TOLERANCE) -> dict:
    """Export, validate on `images` with both runtimes, write `out`; -> validation summary."""
    import onnx

    if det.calibration is None:
        raise ArtifactError(f"{artifact}: not calibrated; only calibrated models can be exported")
    model = onnx.load_from_string(onnx_bytes(det))
    seal(model, export_metadata(det.config, det.calibration, dict(det.meta),
                                hashlib.sha256(Path(artifact).read_bytes()).hexdigest()))
    data = model.SerializeToString()
    with tempfile.TemporaryDirectory() as d:
        candidate = Path(d) / "candidate.onnx"
        candidate.write_bytes(data)
        portable = PortableDetector(candidate)
        worst = (0.0, None)
        scored = 0
        scale = score_scale(det.calibration.threshold, np.asarray(det.calibration.scores))
        for p in images:
            try:
                pic = det.read(p)
            except ImageDecodeError as e:
                log.warning("validation: skipping %s", e)
                continue
            a, b = det.inspect([pic])[0], portable.inspect([pic])[0]
            gap = abs(a.score - b.score) / scale
            if gap >= worst[0]:
                worst = (gap, p)
            scored += 1
            if a.anomalous != b.anomalous and gap > tolerance:
                break
    if scored == 0:
        raise ValueError("export validation needs at least one readable image (--images)")
    if worst[0] > tolerance:
        raise ArtifactError(f"ONNX scores differ from PyTorch by {worst[0]:.2e} x the score scale on {worst[1]} "
                            f"(tolerance {tolerance:g}); nothing written")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), data)
    return {"images": scored, "max_score_gap_over_scale": worst[0], "worst_image": str(worst[1]),
            "bytes": len(data), "tolerance": tolerance}
