"""An exported model: one ONNX file with everything needed to score and decide, and its reader.

The graph (``sae-inspect export``) maps (N, S, S, 3) canvases in [0, 1] to (N, S, S) anomaly
maps: backbone, normalisation, patch features, standardisation, SAE, per-position scoring and
smoothing are all inside. One metadata entry (``sae_inspect``, JSON) holds the model config
(geometry, scoring), the calibration (alpha, threshold, sorted calibration scores, pixel
threshold), version, provenance and the sha256 of the artifact it came from; a second
(``sae_inspect_digest``) is the sha256 of the file with that entry left out, so a tampered
file is refused like a tampered artifact.

``PortableDetector`` reads such a file with ONNX Runtime (an optional dependency: ``pip install
onnxruntime``) and is a ``Scorer``: the decode, geometry, stitching, image score, regions and
conformal decision are the same code the PyTorch detector runs. Its ``alpha`` argument moves the
operating point using the stored calibration scores, without re-exporting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from models.config import PRECISION, ModelConfig
from models.files import ONNX_SUFFIX, ArtifactError
from models.geometry import FeatureGrid
from models.inspection import Calibration, Scorer

SUFFIX = ONNX_SUFFIX
META_KEY = "sae_inspect"
DIGEST_KEY = "sae_inspect_digest"
FORMAT = "sae-inspect-onnx/2"
INPUT, OUTPUT = "canvases", "maps"


def content_digest(model: Any) -> str:
    """sha256 of an ONNX ModelProto serialised without its digest entry."""
    kept = [p for p in model.metadata_props if p.key != DIGEST_KEY]
    clone = type(model)()
    clone.CopyFrom(model)
    del clone.metadata_props[:]
    clone.metadata_props.extend(kept)
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()


def seal(model: Any, meta: dict[str, Any]) -> None:
    """Write the metadata and the digest into an ONNX ModelProto (in place)."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    digest = content_digest(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, digest


def read_sealed(data: bytes, source: str) -> tuple[Any, dict[str, Any]]:
    """ONNX file bytes -> (ModelProto, metadata); ArtifactError if not ours, unsealed or tampered."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ArtifactError(f"{source}: not an ONNX file ({type(e).__name__})") from e
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props or DIGEST_KEY not in props:
        raise ArtifactError(f"{source}: not an SAE Inspect export (no {META_KEY} metadata)")
    if content_digest(model) != props[DIGEST_KEY]:
        raise ArtifactError(f"{source}: digest mismatch: the file was modified after export")
    meta = json.loads(props[META_KEY])
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{source}: export format {meta.get('format')!r}, this reader reads {FORMAT!r}")
    return model, meta


class PortableDetector(Scorer):
    """Scores with an exported ONNX model; same decisions as ``Detector`` within the export tolerance."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, alpha: float | None = None, providers: list[str] | None = None,
                 batch_size: int = 16, companion: str | Path | None = None):
        """`companion`: the `.safetensors` artifact this file was exported from (checked by its sha256,
        StaleExport otherwise); explanations load it lazily and run on PyTorch."""
        import onnxruntime as ort

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ArtifactError(f"{path}: cannot read ({e.strerror})") from e
        model, meta = read_sealed(data, str(path))
        if meta.get("precision") != PRECISION:
            raise ArtifactError(f"{path}: calibrated in precision {meta.get('precision')!r}, but ONNX Runtime "
                                f"scores this graph in {PRECISION!r}: its threshold would not hold; re-export")
        try:
            self.config = ModelConfig.from_dict(meta["config"])
            cal = Calibration(**{**meta["calibration"], "scores": tuple(meta["calibration"]["scores"])})
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path}: inconsistent export metadata ({type(e).__name__}: {e})") from e
        self.calibration = cal.with_alpha(alpha) if alpha is not None else cal
        self._cal_scores = np.asarray(self.calibration.scores)
        self.grid = FeatureGrid.of(self.config)
        self.meta = MappingProxyType({k: v for k, v in meta.items() if k not in ("config", "calibration")})
        self.batch_size, self.path = batch_size, path
        self.companion = None if companion is None else Path(companion)
        if self.companion is not None:
            try:
                digest = hashlib.sha256(self.companion.read_bytes()).hexdigest()
            except OSError as e:
                raise ArtifactError(f"{self.companion}: cannot read ({e.strerror})") from e
            if digest != meta.get("artifact_sha256"):
                raise StaleExport(f"{path.name} was exported from another version of {self.companion.name}; "
                                  "re-export it (a fit writes both)")
        self._explainer: Scorer | None = None
        self._explainer_lock = threading.Lock()
        options = ort.SessionOptions()
        # Intra-op threads sleep between runs instead of spinning: in the service, a spinning pool takes the
        # cores the event loop and decoding need (HTTP at concurrency 8: +5 to +17 % together with the async
        # dependencies of service.routes); alone it costs nothing (inspect at batch 1 and 8: within 1 %).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(data, options, providers=providers or ["CPUExecutionProvider"])

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    def canvas_maps(self, canvases: np.ndarray) -> np.ndarray:
        out = [self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(canvases[i : i + self.batch_size],
                                                                      dtype=np.float32)})[0]
               for i in range(0, len(canvases), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) * 3, np.float32)

    @property
    def can_explain(self) -> bool:
        return self.companion is not None

    @property
    def atlas(self) -> Any:
        """The latent atlas lives in the PyTorch artifact (the companion), once an explanation loaded it."""
        return None if self._explainer is None else self._explainer.atlas

    def explain(self, image: Any) -> Any:
        """Explanations run on the PyTorch artifact this file was exported from (loaded on first use, on
        the CPU), at this model's operating point: scores equal the ONNX ones within the export tolerance."""
        if self.companion is None:
            raise ArtifactError("an exported model without its .safetensors artifact beside it cannot explain")
        with self._explainer_lock:
            if self._explainer is None:
                det = load_scorer(self.companion, "cpu")
                self._explainer = det.replace(calibration=self.calibration)
        return self._explainer.explain(image)


def export_metadata(config: ModelConfig, calibration: Calibration, meta: dict[str, Any],
                    artifact_sha256: str) -> dict[str, Any]:
    """What an export carries besides the graph (see the module docstring)."""
    return {"config": config.to_dict(), "calibration": dataclasses.asdict(calibration),
            "version": meta.get("version", "unversioned"), "name": meta.get("name"),
            "created": meta.get("created"), "code_version": meta.get("code_version"),
            "artifact_sha256": artifact_sha256, "input": INPUT, "output": OUTPUT, "precision": PRECISION,
            "input_layout": "N x size x size x 3 float32 RGB in [0, 1] (canvases of models.preprocess)"}


class StaleExport(ArtifactError):
    """An .onnx file whose recorded artifact digest is not the artifact beside it."""


def load_scorer(path: str | Path, device: str = "auto", alpha: float | None = None,
                companion: str | Path | None = None) -> Any:
    """The one way to load a model file by its suffix: a `.safetensors` artifact (PyTorch) or an exported
    `.onnx` file (ONNX Runtime, explaining through its `companion` artifact when given), optionally at
    another operating point `alpha`; both score and decide through the same ``Scorer`` code. A missing
    runtime is an ArtifactError naming what to install."""
    path = Path(path)
    if path.suffix == SUFFIX:
        try:
            return PortableDetector(path, alpha, companion=companion)
        except ImportError as e:
            raise ArtifactError(f"{path.name}: serving .onnx needs onnxruntime and onnx (missing: {e.name}); "
                                "pip install 'sae-inspect[onnx]'") from e
    try:
        from models.detector import Detector
    except ImportError as e:
        raise ArtifactError(f"{path.name}: a .safetensors artifact needs PyTorch (missing: {e.name}); serve its "
                            "exported .onnx instead, or install the full package") from e
    det = Detector.from_artifact(path, device)
    if alpha is not None and det.calibration is not None:
        det = det.replace(calibration=det.calibration.with_alpha(alpha))
    return det
