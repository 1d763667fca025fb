"""HTTP routes: inspection, model cards, reload (admin), health and metrics."""

from __future__ import annotations

import asyncio
import hmac
import sys
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.decision import UnsupportedAlpha, score_ratio
from models.files import ArtifactError
from models.inspection import NonFiniteScore, at_operating_point
from models.preprocess import Picture
from service import schemas
from service.batcher import BatcherClosed, QueueFull, Result
from service.feedback import NotKept, valid_image_id
from service.metrics import Metrics
from service.registry import ModelRegistry, Served, valid_name
from service.replies import build_reply, explanation
from service.settings import Settings
from service.uploads import decode_upload, images_from_request

router = APIRouter()
DECODE_OUTCOMES = {413: "too_large", 415: "unsupported", 503: "overloaded", 404: "unloaded"}
# Dependencies are `async def`: they only read app state, and FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop per dependency per request (18 % of the event loop's time under load, py-spy).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_model(name: str, registry: Annotated[ModelRegistry, Depends(get_registry)]) -> Served:
    served = registry.models.get(name) if valid_name(name) else None
    if served is None:
        raise HTTPException(404, f"no model named {name!r}" if valid_name(name) else "invalid model name")
    return served


def _bearer_matches(request: Request, *keys) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(
        k is not None and hmac.compare_digest(token.encode(), k.get_secret_value().encode()) for k in keys)


async def require_operator(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    if request.app.state.feedback is None:
        raise HTTPException(403, "feedback is disabled: set SAE_INSPECT_FEEDBACK_DIR to keep uploads for it")
    if settings.operator_key is None and settings.api_key is None:
        raise HTTPException(403, "feedback is disabled: set SAE_INSPECT_OPERATOR_KEY (or SAE_INSPECT_API_KEY)")
    if not _bearer_matches(request, settings.operator_key, settings.api_key):
        raise HTTPException(401, "missing or wrong bearer operator key", headers={"WWW-Authenticate": "Bearer"})


async def require_admin(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    if settings.api_key is None:
        raise HTTPException(403, "admin routes are disabled: set SAE_INSPECT_API_KEY to enable them")
    if not _bearer_matches(request, settings.api_key):
        raise HTTPException(401, "missing or wrong bearer API key", headers={"WWW-Authenticate": "Bearer"})


Model = Annotated[Served, Depends(get_model)]
HeatmapQ = Annotated[Literal["none", "png", "raw"], Query(description="include a heat map")]
ExplainQ = Annotated[bool, Query(description="explain the anomalous regions with the SAE's latent atlas")]
AlphaQ = Annotated[float | None, Query(gt=0, lt=1, description="decide at this false-alarm rate instead of the "
                                       "calibrated one (threshold from the model's calibration scores)")]


def _check_alpha(served: Served, alpha: float | None) -> None:
    """Refuse, before any work, an alpha the model's calibration cannot support (it would decide nothing)."""
    if alpha is None:
        return
    try:
        served.detector.calibration.with_alpha(alpha)
    except UnsupportedAlpha as e:
        raise HTTPException(422, f"model {served.name!r}: {e}") from None


def _require_atlas(registry: ModelRegistry, name: str) -> None:
    served = registry.models.get(name)
    if served is not None and not served.detector.can_explain:
        raise HTTPException(422, f"model {name!r} cannot explain: an ONNX export served without its .safetensors "
                                 "artifact beside it, or an artifact fitted without a latent atlas")


async def _submit(registry: ModelRegistry, name: str, image: Picture, explain: bool = False) -> Result:
    """Queue on the model's current batcher (explanations too); follow a hot swap that happens meanwhile."""
    for _ in range(5):
        served = registry.models.get(name)
        if served is None:
            raise HTTPException(404, f"model {name!r} was unloaded")
        try:
            return await served.batcher.submit(image, explain)
        except BatcherClosed:
            await asyncio.sleep(0)
    raise HTTPException(503, f"model {name!r} is reloading; retry shortly", headers={"Retry-After": "1"})


async def _inspect_one(request: Request, name: str, filename: str | None, data: bytes, heatmap: str,
                       settings: Settings, metrics: Metrics, explain: bool = False,
                       alpha: float | None = None, index: int | None = None) -> schemas.Inspection:
    t0 = time.perf_counter()
    try:
        with request.app.state.registry.arriving(name):  # no await between its end and the queue: see _submit
            image = await decode_upload(request, name, data, settings, filename)
    except HTTPException as e:
        metrics.requests.labels(name, DECODE_OUTCOMES.get(e.status_code, "bad_image")).inc()
        raise
    decode_s = time.perf_counter() - t0
    if explain:
        _require_atlas(request.app.state.registry, name)
    try:
        result = await _submit(request.app.state.registry, name, image, explain)
    except QueueFull:
        metrics.requests.labels(name, "overloaded").inc()
        raise HTTPException(503, f"model {name!r} is at capacity; retry shortly",
                            headers={"Retry-After": "1"}) from None
    except (NonFiniteScore, ValueError) as e:  # refused, never answered: an image the model cannot score
        metrics.requests.labels(name, "bad_image").inc()
        raise HTTPException(422, f"{e}" + (f" (file {filename!r})" if filename else "")) from None
    if alpha is not None:  # the model may have been hot-swapped meanwhile: check against the one that ran
        try:
            result = result._replace(inspection=at_operating_point(result.inspection, result.detector.calibration,
                                                                   alpha))
        except UnsupportedAlpha as e:
            raise HTTPException(422, str(e)) from None
    rid = request.scope["state"]["request_id"]
    image_id = rid if index is None else f"{rid}.{index}"
    resp = build_reply(request, name, result, filename, decode_s, t0, heatmap, settings, image_id)
    if explain:
        resp.explanation = explanation(result.detector, result.explanation, result.inference_seconds)
    r = result.inspection
    metrics.requests.labels(name, resp.verdict).inc()
    metrics.images.labels(name).inc()
    if r.anomalous:
        metrics.anomalies.labels(name).inc()
    _observe_drift(request.app.state.registry, name, result.detector, r.score, metrics)
    if request.app.state.feedback is not None:
        request.app.state.feedback.keep(name, image_id, data, {
            "image_id": image_id, "model": name, "model_version": resp.model_version, "verdict": resp.verdict,
            "score": resp.score, "threshold": resp.threshold, "p_value": resp.p_value, "filename": filename,
            "inspected_at": time.time()})
    ratio = score_ratio(r.score, r.threshold)
    if ratio is not None:  # never observe a value that means nothing (threshold <= 0) or is not finite
        metrics.score_ratio.labels(name).observe(ratio)
    for stage, seconds in (("decode", decode_s), ("queue", result.queue_seconds),
                           ("inference", result.inference_seconds), ("total", time.perf_counter() - t0)):
        metrics.latency.labels(stage).observe(seconds)
    return resp


def _observe_drift(registry, name: str, det, score: float, metrics: Metrics) -> None:
    """Feed the drift monitor of the version that scored the image (a reply from a version already
    swapped out is not evidence about the new calibration)."""
    served = registry.models.get(name)
    if served is None or served.detector is not det:
        return
    mon = served.drift
    p = mon.observe(score)
    metrics.p_values.labels(name).observe(p)
    metrics.drift_evidence.labels(name).set(max(0.0, mon.drift_evidence))
    metrics.burst_evidence.labels(name).set(max(0.0, mon.burst_evidence))


_BINARY = {"type": "string", "format": "binary"}
_ERRORS = {s: {"model": schemas.ErrorBody} for s in (404, 408, 413, 415, 422, 503)}
# The body is read by hand (multipart or raw, bounded), so the schema is declared here for /docs.
_ONE_IMAGE = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}},
    **{t: {"schema": _BINARY} for t in ("image/png", "image/jpeg", "image/tiff", "image/bmp", "image/webp",
                                        "image/gif", "application/octet-stream")}}}}
_MANY_IMAGES = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"files": {"type": "array", "items": _BINARY}}, "required": ["files"]}}}}}


@router.post("/v1/models/{name}/inspect", response_model=schemas.Inspection, tags=["inspection"],
             responses=_ERRORS, openapi_extra=_ONE_IMAGE)
async def inspect(request: Request, served: Model, settings: Annotated[Settings, Depends(get_settings)],
                  metrics: Annotated[Metrics, Depends(get_metrics)], heatmap: HeatmapQ = "none",
                  explain: ExplainQ = False, alpha: AlphaQ = None) -> schemas.Inspection:
    """Inspect one image: multipart upload (any file field) or a raw image/* body."""
    _check_alpha(served, alpha)
    (filename, data), = await images_from_request(request, settings, many=False)
    return await _inspect_one(request, served.name, filename, data, heatmap, settings, metrics, explain, alpha)


@router.post("/v1/models/{name}/inspect/batch", response_model=schemas.BatchInspection, tags=["inspection"],
             responses=_ERRORS, openapi_extra=_MANY_IMAGES)
async def inspect_batch(request: Request, served: Model, settings: Annotated[Settings, Depends(get_settings)],
                        metrics: Annotated[Metrics, Depends(get_metrics)],
                        heatmap: HeatmapQ = "none", explain: ExplainQ = False,
                        alpha: AlphaQ = None) -> schemas.BatchInspection:
    """Inspect several images sent as multipart file fields; they share micro-batches (and the queue,
    explanations included)."""
    _check_alpha(served, alpha)
    files = await images_from_request(request, settings, many=True)

    async def one(i: int, filename: str | None, data: bytes) -> schemas.Inspection | schemas.ImageError:
        try:
            return await _inspect_one(request, served.name, filename, data, heatmap, settings, metrics, explain,
                                      alpha, index=i)
        except HTTPException as e:  # this file alone failed; its metric was counted in _inspect_one
            return schemas.ImageError(filename=filename, status=e.status_code,
                                      error=schemas.error_code(e.status_code), detail=str(e.detail))

    results = await asyncio.gather(*(one(i, f, d) for i, (f, d) in enumerate(files)))
    if all(isinstance(r, schemas.ImageError) and r.status == 503 for r in results):
        raise HTTPException(503, f"model {served.name!r} is at capacity; retry shortly", headers={"Retry-After": "1"})
    return schemas.BatchInspection(request_id=request.scope["state"]["request_id"], results=list(results))


def _card(served: Served) -> schemas.ModelCard:
    det = served.detector
    cal = det.calibration
    cfg = det.config
    provenance = {k: det.meta.get(k) for k in ("created", "code_version", "n_fit_images", "n_calibration_images",
                                               "n_calibration_parts",
                                               "dataset_fingerprint", "parent_version", "fit_stats",
                                               "calibration_split", "backbone_sha256", "scoring_selection",
                                               "canvas_choice")}
    return schemas.ModelCard(
        name=served.name, version=det.version, runtime=getattr(det, "runtime", "pytorch"), backbone=cfg.backbone.name,
        stages=list(cfg.backbone.stages), preprocess=vars(cfg.preprocess), sae=vars(cfg.sae),
        scoring=vars(cfg.scoring),
        threshold=cal.threshold, pixel_threshold=cal.pixel_threshold, alpha=cal.alpha,
        requested_alpha=cal.requested_alpha, min_alpha=cal.min_alpha,
        false_alarm_rate_90=cal.false_alarm_rate_90,
        calibration_size=len(cal.scores), calibration_scores=list(cal.scores), provenance=provenance,
        loaded_at=served.loaded_at)


@router.get("/v1/models", response_model=list[schemas.ModelCard], tags=["models"])
async def list_models(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> list[schemas.ModelCard]:
    return [_card(s) for s in registry.models.values()]


@router.get("/v1/models/{name}", response_model=schemas.ModelCard, tags=["models"])
async def model_card(served: Model) -> schemas.ModelCard:
    return _card(served)


@router.post("/v1/models/{name}/feedback", response_model=schemas.FeedbackOut, tags=["feedback"],
             dependencies=[Depends(require_operator)], responses={s: {"model": schemas.ErrorBody}
                                                                  for s in (401, 403, 404, 422)})
async def feedback(request: Request, name: str, body: schemas.FeedbackIn,
                   metrics: Annotated[Metrics, Depends(get_metrics)]) -> schemas.FeedbackOut:
    """File a kept inspection as ``good`` (a false alarm: training data) or ``defect`` (confirmed)."""
    if not valid_name(name):
        raise HTTPException(404, "invalid model name")
    if not valid_image_id(body.image_id):
        raise HTTPException(404, f"unknown image id {body.image_id[:80]!r}: use the image_id of an inspection reply")
    store = request.app.state.feedback
    try:
        rec = await asyncio.get_running_loop().run_in_executor(
            None, store.file, name, body.image_id, body.label, body.box)
    except NotKept as e:
        raise HTTPException(404, str(e)) from None
    except OSError as e:
        raise HTTPException(503, f"could not file the image: {e.strerror or e}", headers={"Retry-After": "5"}) \
            from None
    metrics.feedback.labels(name, body.label, rec["verdict"]).inc()
    return schemas.FeedbackOut(file=rec["file"], label=body.label, verdict=rec["verdict"], score=rec["score"],
                               model_version=rec["model_version"])


@router.post("/v1/models/reload", tags=["admin"], dependencies=[Depends(require_admin)])
async def reload_all(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> dict:
    """Rescan the models folder: load new or changed artifacts, unload removed ones."""
    return {"outcomes": await registry.sync()}


@router.post("/v1/models/{name}/reload", tags=["admin"], dependencies=[Depends(require_admin)])
async def reload_one(name: str, registry: Annotated[ModelRegistry, Depends(get_registry)]) -> dict:
    """Reload one model from its artifact; a bad artifact leaves the serving version in place (409)."""
    if not valid_name(name):
        raise HTTPException(404, "invalid model name")
    try:
        served = await registry.load(name)
    except FileNotFoundError as e:
        raise HTTPException(404, str(e)) from None
    except ArtifactError as e:
        still = registry.models.get(name)
        raise HTTPException(409, f"reload rejected: {e}; " + (
            f"still serving version {still.detector.version}" if still else "model not serving")) from None
    return {"model": name, "version": served.detector.version, "outcome": "loaded"}


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", tags=["ops"])
async def healthz() -> dict:
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", tags=["ops"])
async def readyz(request: Request, registry: Annotated[ModelRegistry, Depends(get_registry)]) -> Response:
    ready = registry.ready
    body = {"ready": ready, "models": {n: s.detector.version for n, s in registry.models.items()},
            "failed": {n: f.error for n, f in registry.failures.items()}, "ignored": registry.ignored}
    return JSONResponse(body, 200 if ready else 503)


@router.get("/metrics", tags=["ops"])
async def metrics_endpoint(metrics: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    torch = sys.modules.get("torch")  # only where a PyTorch model made torch load: never imported for this
    if torch is not None and torch.cuda.is_available():
        metrics.gpu_memory.set(torch.cuda.memory_allocated())
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
