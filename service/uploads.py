"""Uploads: reading image bytes from a request (multipart or raw, bounded) and decoding them for a model
off the event loop, holding their pixel count of the server-wide decode budget."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from models.imageio import ImageDecodeError, probe_image
from models.preprocess import Picture
from service.budget import BudgetBusy, PixelBudget
from service.registry import ModelRegistry
from service.settings import Settings

DECODE_STATUS = {"invalid": 422, "unsupported": 415, "too_large": 413}


def _safe_name(name: str | None) -> str | None:
    return name.replace("\\", "/").rsplit("/", 1)[-1][:255] if name else None


async def images_from_request(request: Request, settings: Settings, many: bool) -> list[tuple[str | None, bytes]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=settings.max_batch_files if many else 1, max_fields=16)
        # only the base name of a client's file name is kept, and only to echo it back
        files = [(_safe_name(v.filename), await v.read()) for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(422, "multipart body holds no file; send the image in a file field")
        return files
    if many:
        raise HTTPException(415, "batch inspection takes multipart/form-data with one file field per image")
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [(None, await request.body())]
    raise HTTPException(415, f"content type {ctype or '(none)'!r} is not an image; send image/* or multipart")


async def decode_upload(request: Request, model: str, data: bytes, settings: Settings, name: str | None) -> Picture:
    """Header first (format, pixel count), then a decode reduced to the model's working resolution,
    holding that many pixels of the server-wide decode budget while it runs."""
    registry: ModelRegistry = request.app.state.registry
    budget: PixelBudget = request.app.state.budget
    loop = asyncio.get_running_loop()
    try:  # nothing that parses an upload runs on the event loop: /healthz stays prompt
        header = await loop.run_in_executor(request.app.state.decode_pool, probe_image, data, settings.max_pixels,
                                            "image")
        served = registry.models.get(model)
        if served is None:
            raise HTTPException(404, f"model {model!r} was unloaded")
        async with budget.hold(header.pixels, settings.decode_wait_s):
            return await loop.run_in_executor(request.app.state.decode_pool, request.app.state.turns.decode,
                                              served.detector.decode, data, settings.max_pixels, "image")
    except ImageDecodeError as e:
        raise HTTPException(DECODE_STATUS[e.kind], str(e) + (f" (file {name!r})" if name else "")) from None
    except BudgetBusy:
        raise HTTPException(503, "the server is decoding as many pixels as it may hold; retry shortly",
                            headers={"Retry-After": "1"}) from None
