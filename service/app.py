"""FastAPI application factory. Served by ``sae-inspect-serve`` (``service.server.uvicorn_config``), the one
way to serve: plain ``uvicorn --factory`` would lack the protocol guards (header deadline, connection cap,
JSON protocol errors), so it is neither documented nor deployed."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.budget import PixelBudget
from service.feedback import FeedbackStore
from service.guards import BodyLimitError, GuardMiddleware
from service.memory import return_large_frees_to_os
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.routes import router
from service.schemas import error_code
from service.settings import Settings, SettingsError, load_settings
from service.turns import Turns

log = logging.getLogger("sae_inspect.service")


def _error(request: Request, status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    rid = request.scope.get("state", {}).get("request_id")
    return JSONResponse({"error": error, "detail": detail, "request_id": rid}, status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; without `settings` they come from the environment, and a bad value is one line
    naming the variable (SystemExit), never a traceback."""
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as e:
            raise SystemExit(f"sae-inspect-serve: bad setting: {e}") from None
    metrics = Metrics()
    metrics.drift_alarm_level.set(math.log10(settings.drift_threshold))
    return_large_frees_to_os()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads and importlib.util.find_spec("torch") is not None:
            import torch  # lazily: an ONNX-only install serves without it

            torch.set_num_threads(settings.torch_threads)
        executor = ThreadPoolExecutor(1, thread_name_prefix="inference")  # one device, one runner
        app.state.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        registry = ModelRegistry(settings, metrics, executor, app.state.turns)
        app.state.registry = registry
        app.state.feedback = None
        if settings.feedback_dir is not None:
            app.state.feedback = FeedbackStore(settings.feedback_dir, settings.feedback_max_bytes,
                                               settings.feedback_max_age_s,
                                               lambda outcome: metrics.feedback_ring.labels(outcome).inc())
        if not settings.models_dir.is_dir():
            log.warning("models folder %s does not exist; serving nothing until it appears", settings.models_dir)
        outcomes = await registry.sync()
        for name, outcome in outcomes.items():
            log.info("model %s: %s", name, outcome)
        watcher = asyncio.create_task(registry.watch(settings.watch_interval_s)) \
            if settings.watch_interval_s > 0 else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            await registry.close()
            executor.shutdown(wait=True)
            app.state.decode_pool.shutdown(wait=True)
            if app.state.feedback is not None:
                app.state.feedback.close()

    app = FastAPI(title="SAE Inspect", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Visual inspection from good images only: score, verdict, defect regions, heat map.")
    app.state.settings, app.state.metrics = settings, metrics
    app.state.budget = PixelBudget(settings.max_decode_pixels, metrics.decode_pixels.set)
    app.state.turns = Turns(settings.cpu_turns)
    app.include_router(router)
    static = Path(__file__).parent / "static"
    app.mount("/static", ConsoleStatic(directory=static), name="static")
    # Swagger UI 5 from the fastapi-offline package's assets: /docs works with no network at all.
    app.mount("/docs/assets", StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="SAE Inspect API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(static / "index.html", headers=CONSOLE_HEADERS)

    app.add_middleware(GuardMiddleware, max_body=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s,
                       metrics=metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error(request, exc.status_code, error_code(exc.status_code), detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(request, 422, "invalid_request", msgs)

    @app.exception_handler(BodyLimitError)
    async def body_error(request: Request, exc: BodyLimitError) -> JSONResponse:
        return _error(request, exc.status, error_code(exc.status), exc.detail)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        rid = request.scope.get("state", {}).get("request_id")
        log.info("client disconnected before its request was complete (%s %s, request %s)", request.method,
                 request.url.path, rid)
        return _error(request, 400, "client_disconnected", "the client disconnected during the upload")

    return app


# The console runs only its own script and styles: markup injected into it could not run script.
CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
}


class ConsoleStatic(StaticFiles):
    """The console's static files, served with the console's security headers."""

    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(CONSOLE_HEADERS)
        return response
