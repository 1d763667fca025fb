"""What model files are, without importing torch (an ONNX-only install reads exports with this too)."""

ARTIFACT_SUFFIX = ".safetensors"
"""A fitted model: weights + config + calibration (``models.artifact``), scored by PyTorch."""
ONNX_SUFFIX = ".onnx"
"""A sealed export of one (``models.portable``), scored by ONNX Runtime."""


class ArtifactError(ValueError):
    """An artifact or export file cannot be used; the message names the file and the problem."""
