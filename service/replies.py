"""Replies: an inspection result as the API's response body (heat map, explanation)."""

from __future__ import annotations

import time

from fastapi import Request

from service import schemas
from service.batcher import Result
from service.render import b64, overlay_png, raw_map
from service.settings import Settings


def build_reply(request: Request, name: str, result: Result, filename: str | None,
              decode_s: float, t0: float, heatmap: str, settings: Settings, image_id: str) -> schemas.Inspection:
    r = result.inspection
    det = result.detector
    hm = None
    if heatmap != "none":
        pix = det.calibration.pixel_threshold
        data, w, h = overlay_png(r, pix, settings.heatmap_max_side) if heatmap == "png" \
            else raw_map(r, settings.heatmap_max_side)
        hm = schemas.Heatmap(format=heatmap, width=w, height=h, data=b64(data), pixel_threshold=pix)
    return schemas.Inspection(
        request_id=request.scope["state"]["request_id"], image_id=image_id, model=name, model_version=det.version,
        filename=filename, score=r.score, threshold=r.threshold, alpha=r.alpha, p_value=r.p_value,
        verdict="anomalous" if r.anomalous else "good", image_width=r.layout.original_hw[1],
        image_height=r.layout.original_hw[0], regions=[schemas.RegionOut(**x._asdict()) for x in r.regions],
        timings=schemas.Timings(decode_ms=decode_s * 1e3, queue_ms=result.queue_seconds * 1e3,
                                inference_ms=result.inference_seconds * 1e3,
                                total_ms=(time.perf_counter() - t0) * 1e3, batch_size=result.batch_size),
        heatmap=hm)


def explanation(det, regions, seconds: float) -> schemas.Explanation:
    from models.explain import atlas_png  # PyTorch models only: an ONNX-only server never gets here

    def pngs(j: int) -> list[str]:
        return [b64(p) for p in atlas_png(det.atlas, j)]

    out = []
    for e in regions:
        x, y, w, h = e.box
        out.append(schemas.RegionExplanationOut(
            x=x, y=y, width=w, height=h, error_share=e.error_share, kind=e.kind, novelty=e.novelty,
            misplacement=e.misplacement,
            unusual=[schemas.LatentOut(**u._asdict(), atlas=pngs(u.latent)) for u in e.unusual],
            expected=[schemas.ExpectedOut(latent=j, rate_here=r, atlas=pngs(j)) for j, r in e.expected]))
    return schemas.Explanation(regions=out, seconds=seconds)
