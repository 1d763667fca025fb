"""Uploads whose parsing costs more than their bytes, by class: the RSS growth each causes in a running
server, and /healthz latency while they are uploaded without pause. Used by tests/service/test_parse_cost.py
and bench/reliability.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import numpy as np

from bench.images import chunk_bomb_png, comment_bomb_jpeg, gray16_png, strip_png
from bench.servers import rss_bytes

PER_IMAGE_BOUND = 256 * 2**20
"""README: most RSS growth while one upload of any class below is decoded and scored."""
CLASSES: dict[str, tuple[Callable[[], bytes], str, set[int]]] = {
    "png-chunk-bomb-30MB": (lambda: chunk_bomb_png(30), "image/png", {422}),
    "jpeg-marker-bomb-30MB": (lambda: comment_bomb_jpeg(30), "image/jpeg", {422}),
    "jpeg-tiny-markers-30MB": (lambda: comment_bomb_jpeg(30, segment=4), "image/jpeg", {422}),
    "strip-40000000x1": (lambda: strip_png(40_000_000, 1), "image/png", {200}),
    "strip-13000000x3": (lambda: strip_png(13_000_000, 3), "image/png", {200}),
    "gray16-6000x6000": (lambda: gray16_png(6000, 6000), "image/png", {200}),
}
"""Class -> (upload, content type, statuses it may get)."""


class Peak:
    """Samples a process's RSS every 10 ms while open."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, rss_bytes(pid), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._t.join()


def class_memory(url: str, pid: int, model: str, kind: str) -> dict:
    """One upload of `kind` -> its status and the server's peak RSS growth while it ran."""
    make, ctype, expected = CLASSES[kind]
    data = make()
    base = rss_bytes(pid)
    with Peak(pid) as p:
        r = httpx.post(f"{url}/v1/models/{model}/inspect", content=data, headers={"content-type": ctype},
                       timeout=120)
    return {"class": kind, "bytes": len(data), "status": r.status_code, "expected": sorted(expected),
            "rss_growth_mb": (p.peak - base) / 2**20, "detail": r.text[:200] if r.status_code != 200 else ""}


def healthz_under_uploads(url: str, model: str, seconds: float = 8.0, clients: int = 3) -> dict:
    """`clients` threads upload every class in turn without pause; /healthz is timed every 20 ms meanwhile."""
    uploads = [(make(), ctype) for make, ctype, _ in CLASSES.values()]
    stop = threading.Event()
    statuses: list[int] = []

    def hammer(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                data, ctype = uploads[i % len(uploads)]
                statuses.append(c.post(f"/v1/models/{model}/inspect", content=data,
                                       headers={"content-type": ctype}).status_code)
                i += 1

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    latencies, codes = [], set()
    try:
        with httpx.Client(base_url=url, timeout=10) as c:
            time.sleep(0.5)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                codes.add(c.get("/healthz").status_code)
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)
    finally:
        stop.set()
        for w in workers:
            w.join(120)
    lat = np.array(latencies) * 1000
    return {"healthz_n": len(lat), "healthz_codes": sorted(codes), "healthz_p50_ms": float(np.median(lat)),
            "healthz_p95_ms": float(np.percentile(lat, 95)),
            "healthz_p99_ms": float(np.percentile(lat, 99)), "healthz_max_ms": float(lat.max()),
            "uploads_answered": len(statuses), "upload_statuses": sorted(set(statuses))}
