"""Helpers for service tests: versioned artifacts, a real uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from models.detector import Detector
from service.app import create_app
from service.settings import Settings


def save_version(detector: Detector, path: Path, version: str) -> Path:
    """Write the session model under another version string (a 'retrained' artifact)."""
    clone = Detector(detector.config, detector.backbone, detector.feat_mean, detector.feat_std, detector.sae,
                     detector.calibration, {**detector.meta, "version": version})
    clone.save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 in a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
