"""How the service meets the network: uvicorn, with deadlines and a connection cap for slow clients.

What protects what (see the README):
* header deadline (``header_timeout_s``): a connection that has not delivered complete request
  headers this long after opening (or after its previous response) is closed; uvicorn has no
  such timer of its own, so idle and slow-header sockets would otherwise stay open forever;
* keep-alive limit (``keepalive_s``): an idle connection between requests is closed;
* connection cap (``max_connections``): connections beyond it get one JSON 503 and are closed;
* body deadline (``body_timeout_s``, in ``service.app.GuardMiddleware``): the whole body must
  arrive within this time of the request's start, however it is dripped;
* header size: h11 refuses request heads over 16 KiB with 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

log = logging.getLogger("sae_inspect.service")
MAX_HEAD_BYTES = 16 * 1024


def _raw_response(status: int, reason: str, body: dict[str, Any], retry: bool = True) -> bytes:
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n{'retry-after: 1' + chr(13) + chr(10) if retry else ''}\r\n").encode() + data


def guarded_protocol(header_timeout_s: float, max_connections: int, on_close: Any = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap; `on_close(reason)` counts cuts."""
    busy = _raw_response(503, "Service Unavailable", {
        "error": "overloaded", "detail": f"the server holds its maximum of {max_connections} connections; retry"})

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                if on_close:
                    on_close("connection_cap")
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on a kept-alive connection gets its own deadline
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # headers complete: the body deadline takes over

        def send_400_response(self, msg: str) -> None:
            """Protocol errors (malformed request line, oversized head, bad framing) as JSON, then close."""
            if on_close:
                on_close("protocol_error")
            self.transport.write(_raw_response(400, "Bad Request", {
                "error": "bad_request", "detail": f"malformed HTTP request: {msg}"}, retry=False))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                if on_close:
                    on_close("header_timeout")
                self.transport.close()

    return GuardedH11Protocol


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
