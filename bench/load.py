"""The one async load generator: `concurrency` clients post images to a model for `seconds`."""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import httpx
import numpy as np


class Reply(NamedTuple):
    status: int
    """HTTP status, or 0 when the request failed at the transport (the error is in `version`)."""
    version: str | None
    """The model version that answered (200 only), or the transport error."""
    seconds: float
    server_ms: dict | None = None
    """The service's own `timings` of a 200 reply (decode, queue, inference, total; batch size)."""
    done: float = 0.0
    """`time.perf_counter()` when the reply arrived: a steady-state rate counts the replies inside a window."""


async def load(url: str, model: str, payloads: list[bytes], concurrency: int, seconds: float,
               content_type: str = "application/octet-stream") -> list[Reply]:
    """Every reply, in completion order; client i sends payloads i, i + concurrency, ..."""
    stop = time.perf_counter() + seconds
    replies: list[Reply] = []

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            k = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post(f"/v1/models/{model}/inspect", content=payloads[k % len(payloads)],
                                     headers={"content-type": content_type})
                    body = r.json() if r.status_code == 200 else {}
                    t1 = time.perf_counter()
                    replies.append(Reply(r.status_code, body.get("model_version"), t1 - t0, body.get("timings"), t1))
                except httpx.HTTPError as e:
                    t1 = time.perf_counter()
                    replies.append(Reply(0, repr(e), t1 - t0, None, t1))
                k += concurrency

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return replies


def steady_rate(replies: list[Reply], start: float, warm: float, window: float) -> float:
    """Images/s of the replies that arrived `warm` to `warm + window` seconds after `start` (a perf_counter), every
    client busy all along: the ramp (all clients decoding at once) and the tail (the last batch, after the clients
    stopped sending) are left out. `load` sends until `start + seconds`, so `warm + window <= seconds`."""
    inside = [r for r in replies if r.status == 200 and start + warm <= r.done <= start + warm + window]
    return len(inside) / window


def summary(replies: list[Reply], elapsed: float, concurrency: int) -> dict:
    """Throughput and latency of a load run."""
    codes: dict[int, int] = {}
    for r in replies:
        codes[r.status] = codes.get(r.status, 0) + 1
    ok = codes.get(200, 0)
    lat = np.array([r.seconds for r in replies]) * 1000 if replies else np.zeros(1)
    timed = [r.server_ms for r in replies if r.server_ms]
    server = {k: float(np.median([t[k] for t in timed])) for k in ("decode_ms", "queue_ms", "inference_ms",
                                                                    "total_ms", "batch_size")} if timed else {}
    return {"concurrency": concurrency, "seconds": elapsed, "requests": len(replies), "ok": ok,
            "status_counts": codes, "images_per_s": ok / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "server_median": server}
