"""The frozen backbone run by ONNX Runtime, for the offline passes over many images on CPU.

A fit pushes every good image through the backbone (patch features, the scoring choice, the
calibration scores), and an evaluation every test image. On CPU, EfficientNet-Lite's depthwise
convolutions run faster in ONNX Runtime (the runtime a CPU service serves by default) than in eager
PyTorch: bench/results/cost.md, column "bare forward, fit's runtime". ``offline_backbone`` exports
the backbone alone (TorchScript exporter: seconds, where the dynamo exporter takes tens), checks the
session against the eager forward on a fixed input and returns it; where ONNX Runtime is missing,
the device is not the CPU, the export fails or the check does, it returns the eager backbone and
says why. Either way the module computes the same stage maps (within ``TOLERANCE``), and what is
saved is the eager backbone's identity (name, weights).
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from typing import NamedTuple

import torch
from torch import nn

from models.backbone import Backbone

log = logging.getLogger(__name__)
TOLERANCE = 1e-4
"""Largest accepted |ONNX Runtime - PyTorch| on any stage map, as a fraction of that map's largest |value|."""


class RuntimeBackbone(nn.Module):
    """`backbone`'s forward by an ONNX Runtime session: (B, 3, S, S) -> list of stage maps, as Backbone."""

    def __init__(self, backbone: Backbone, session: object):
        super().__init__()
        self.name, self.stages, self.weights_path = backbone.name, backbone.stages, backbone.weights_path
        self._eager = (backbone,)  # a tuple: the eager module is not a child of this one
        self.session = session
        self.input = session.get_inputs()[0].name

    @property
    def weights_sha256(self) -> str:
        return self._eager[0].weights_sha256

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.session.run(None, {self.input: x.detach().cpu().float().contiguous().numpy()})
        return [torch.from_numpy(m).to(x.device) for m in out]


class OfflineBackbone(NamedTuple):
    module: nn.Module
    """RuntimeBackbone, or the eager Backbone itself."""
    runtime: str
    """'onnxruntime', or 'pytorch (<why>)'."""


class _Stages(nn.Module):
    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone._forward(x))


def _session(backbone: Backbone, size: int) -> object:
    import onnxruntime as ort

    buf = io.BytesIO()
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(_Stages(backbone).eval(), (example,), buf, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def max_relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| over stage maps, each relative to the largest |value| of that stage in `a`."""
    return max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)) for x, y in zip(a, b, strict=True))


@functools.lru_cache(maxsize=2)
def offline_backbone(backbone: Backbone, size: int, device: str) -> OfflineBackbone:
    """The fastest checked way to run `backbone` on `size` px canvases on `device` (see the module doc)."""
    if isinstance(backbone, RuntimeBackbone):  # already the offline runtime (an offline detector's)
        return OfflineBackbone(backbone, "onnxruntime")
    if torch.device(device).type != "cpu":
        return OfflineBackbone(backbone, f"pytorch ({device})")
    try:
        session = _session(backbone, size)
    except ImportError:
        return OfflineBackbone(backbone, "pytorch (onnxruntime not installed)")
    except Exception as e:  # noqa: BLE001 - any backbone the exporter cannot trace runs eagerly
        log.warning("backbone %s: ONNX export failed (%s); offline passes run it in PyTorch", backbone.name, e)
        return OfflineBackbone(backbone, f"pytorch (export failed: {type(e).__name__})")
    runner = RuntimeBackbone(backbone, session)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
    diff = max_relative_difference(backbone(x), runner(x))
    if not diff <= TOLERANCE:
        log.warning("backbone %s: ONNX Runtime differs from PyTorch by %.2g of the map scale; offline passes run "
                    "it in PyTorch", backbone.name, diff)
        return OfflineBackbone(backbone, f"pytorch (ONNX Runtime differed by {diff:.2g})")
    return OfflineBackbone(runner, "onnxruntime")
