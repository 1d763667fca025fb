"""What protects the service from its clients (README "What protects what"), in one place.

* ``guarded_protocol``: uvicorn's h11 protocol with a header deadline (``header_timeout_s``: a connection
  that has not delivered complete request headers this long after opening, or after its previous
  response, is closed; uvicorn has no such timer), a connection cap (``max_connections``: one JSON 503
  and close), request heads over 16 KiB refused, and protocol errors answered as JSON 400 + close;
* ``GuardMiddleware``: a request id on every response, the in-flight gauge, the response-code counter
  (500s included: unexpected errors are answered here, inside the guard), the body-size limit (413), a
  total body deadline (408) that dripping cannot extend, and Content-Length with Transfer-Encoding
  refused (400 + close, RFC 9112 6.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import h11
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.metrics import Metrics
from service.schemas import error_code

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


class BodyLimitError(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


class GuardMiddleware:
    """Request id, in-flight gauge, response-code counter, body-size limit (413) and a total
    body deadline (408).

    Pure ASGI so the limit holds for chunked bodies without Content-Length too; the deadline
    runs from the request's start and does not restart with each chunk, so a client dripping
    one byte at a time cannot hold a request open.
    """

    def __init__(self, app: ASGIApp, max_body: int, body_timeout_s: float, metrics: Metrics):
        self.app, self.max_body, self.timeout, self.metrics = app, max_body, body_timeout_s, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        headers = dict(scope.get("headers") or [])
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
                self.metrics.responses.labels(str(message["status"])).inc()
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and b"transfer-encoding" in headers:  # RFC 9112 6.1: a smuggling vector
            await self._reject(send_wrapper, 400, "a request may not carry both Content-Length and "
                                                  "Transfer-Encoding", rid)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._reject(send_wrapper, 413, f"request body of {int(declared)} bytes exceeds the limit of "
                                                  f"{self.max_body} bytes", rid)
            return
        received = 0
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                raise BodyLimitError(408, f"request body did not arrive within {self.timeout:g} s of the "
                                          "request's start") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyLimitError(413, f"request body exceeds the limit of {self.max_body} bytes")
            return message

        self.metrics.inflight.inc()
        try:
            await self.app(scope, limited_receive, send_wrapper)
        except BodyLimitError as e:
            if not started:
                await self._reject(send_wrapper, e.status, e.detail, rid)
        except Exception:  # noqa: BLE001 - answered here, inside the guard, so the 500 is counted and tagged
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            if not started:
                await self._reject(send_wrapper, 500, "internal error; see the server log with this request_id",
                                   rid, close=False)
        finally:
            self.metrics.inflight.dec()

    @staticmethod
    async def _reject(send: Send, status: int, detail: str, rid: str, close: bool = True) -> None:
        response = JSONResponse({"error": error_code(status), "detail": detail, "request_id": rid}, status,
                                headers={"connection": "close"} if close else None)
        await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
