"""How the service meets the network: the one uvicorn configuration, carrying every guard of
``service.guards`` (header deadline, connection cap, JSON protocol errors, head size) and the
keep-alive limit (``keepalive_s``: an idle connection between requests is closed)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from service.guards import MAX_HEAD_BYTES, guarded_protocol
from service.settings import Settings


def uvicorn_config(app: FastAPI, settings: Settings, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """The one uvicorn configuration, for `sae-inspect-serve` and for tests and benchmarks alike."""
    metrics = app.state.metrics

    def cut(reason: str) -> None:
        metrics.connections_cut.labels(reason).inc()

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False,
        http=guarded_protocol(settings.header_timeout_s, settings.max_connections, cut),
        timeout_keep_alive=settings.keepalive_s, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=30)
