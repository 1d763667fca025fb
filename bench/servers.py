"""A real server for tests and benchmarks: uvicorn in a thread or `python -m service.cli` in a child."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app
from service.server import uvicorn_config
from service.settings import Settings


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.05) -> None:
    """Poll `condition` until it holds; TimeoutError after `timeout_s` (never a silent fall-through)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(poll_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 in a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, "127.0.0.1", port, "warning"))
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


@contextmanager
def server_process(models_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m service.cli` in a child process (own memory, real signals); yields (url, process)."""
    port = free_port()
    full_env = {**os.environ, "SAE_INSPECT_MODELS_DIR": str(models_dir), "SAE_INSPECT_DEVICE": "cpu",
                "SAE_INSPECT_WATCH_INTERVAL_S": "0", **env}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--port", str(port), "--log-level", "info"],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server not ready in time")
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")
