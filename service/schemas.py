"""Response models of the HTTP API (they make the OpenAPI docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RegionOut(BaseModel):
    x: int = Field(description="left edge, original-image pixels")
    y: int
    width: int
    height: int
    area: int = Field(description="pixels above the pixel threshold")
    peak: float = Field(description="highest anomaly-map value in the region")


class Timings(BaseModel):
    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int = Field(description="images in the micro-batch this one ran in")


class Heatmap(BaseModel):
    format: Literal["png", "raw"]
    width: int
    height: int
    data: str = Field(description="base64: an RGBA PNG overlay (transparent well below the pixel threshold), "
                      "or little-endian float32 row-major map values")
    pixel_threshold: float


class LatentOut(BaseModel):
    latent: int
    region_rate: float = Field(description="fraction of the region's patches where this latent fires")
    good_rate: float = Field(description="fraction of good patches where it fires")
    activation: float
    good_max_activation: float
    never_seen: bool = Field(description="fires here more strongly than anywhere on good products")
    atlas: list[str] = Field(description="base64 PNG crops of good parts where this latent fires most")


class ExpectedOut(BaseModel):
    latent: int
    rate_here: float = Field(description="how often good products use this latent at this place")
    atlas: list[str]


class RegionExplanationOut(BaseModel):
    x: int
    y: int
    width: int
    height: int
    error_share: float = Field(description="this region's share of the image's reconstruction error")
    kind: Literal["novel", "misplaced"] = Field(
        description="novel: looks like nothing in good products; misplaced: like a different part of them")
    novelty: float
    misplacement: float
    unusual: list[LatentOut]
    expected: list[ExpectedOut]


class Explanation(BaseModel):
    regions: list[RegionExplanationOut]
    seconds: float


class Inspection(BaseModel):
    request_id: str
    image_id: str = Field(description="this image's id for POST /v1/models/{name}/feedback: the request id, "
                          "with '.N' appended for the N-th file of a batch")
    model: str
    model_version: str
    filename: str | None = None
    score: float
    threshold: float
    alpha: float = Field(description="false-alarm rate of the operating point the verdict used")
    p_value: float = Field(description="conformal p-value: (1 + #calibration scores >= score) / (n + 1)")
    verdict: Literal["good", "anomalous"]
    image_width: int
    image_height: int
    regions: list[RegionOut]
    timings: Timings
    heatmap: Heatmap | None = None
    explanation: Explanation | None = None


class ImageError(BaseModel):
    """One image of a batch that could not be inspected; the others still are."""

    filename: str | None = None
    status: int
    """The HTTP status this image alone would have got (413, 415, 422, 503, ...)."""
    error: str
    detail: str


class BatchInspection(BaseModel):
    request_id: str
    results: list[Inspection | ImageError]
    """One entry per file, in the order sent: an inspection, or the error for that file."""


class ModelCard(BaseModel):
    name: str
    version: str
    runtime: Literal["pytorch", "onnxruntime"] = Field(description="what runs the model: a .safetensors "
                                                       "artifact (PyTorch) or an exported .onnx (ONNX Runtime)")
    backbone: str
    stages: list[int]
    preprocess: dict
    sae: dict
    scoring: dict
    """How the map and the image score are computed, including the normalisation the fit chose."""
    threshold: float
    pixel_threshold: float
    alpha: float = Field(description="false-alarm rate the threshold guarantees on good images of the calibrated "
                         "process (>= 1/(calibration_size + 1))")
    requested_alpha: float = Field(description="the rate the fit asked for; below `alpha` when the calibration set "
                                   "was too small to support it")
    min_alpha: float = Field(description="smallest ?alpha= this model accepts: 1/(calibration_size + 1)")
    false_alarm_rate_90: float = Field(description="the false-alarm rate this model stays at or below with 90 % "
                                       "confidence over the draw of its calibration images: `alpha` is the average "
                                       "over draws, and on few calibration images one model's rate spreads widely "
                                       "around it")
    calibration_size: int
    calibration_scores: list[float]
    provenance: dict
    loaded_at: float


class ErrorBody(BaseModel):
    error: str
    detail: str
    request_id: str | None = None


class FeedbackIn(BaseModel):
    image_id: str = Field(description="the image_id of the inspection (its request id for a single image)")
    label: Literal["good", "defect"] = Field(description="good: a false alarm (or a good part to train on); "
                                             "defect: a confirmed defect")
    box: list[int] | None = Field(None, min_length=4, max_length=4,
                                  description="optional defect box x, y, width, height in image pixels")


class FeedbackOut(BaseModel):
    file: str = Field(description="where the image was filed, relative to the feedback folder")
    label: str
    verdict: str
    score: float
    model_version: str


ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error", 503: "overloaded"}
"""The ``error`` field of every error body, by HTTP status."""


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, "error")
