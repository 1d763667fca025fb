"""Load, faults and restarts against a real server process (short variants; long ones in bench/)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx

from bench.images import part_png
from bench.load import load
from bench.servers import rss_bytes, server_process, wait_until

GOOD = part_png(21)
HDR = {"content-type": "image/png"}
ROOT = Path(__file__).resolve().parents[2]


def _load(url: str, concurrency: int, seconds: float) -> dict[int, int]:
    codes: dict[int, int] = {}
    for r in asyncio.run(load(url, "parts", [GOOD], concurrency, seconds, "image/png")):
        codes[r.status] = codes.get(r.status, 0) + 1
    return codes


def test_sustained_load_no_5xx_and_flat_memory(models_dir):
    with server_process(models_dir, SAE_INSPECT_QUEUE_SIZE="16") as (url, proc):
        _load(url, 32, 4)  # warm up: full batches, allocator caches
        before = rss_bytes(proc.pid)
        codes = _load(url, 32, 6)
        grown = rss_bytes(proc.pid) - before
    print(f"status counts at concurrency 32 for 6 s: {codes}; RSS growth {grown / 2**20:.1f} MiB")
    assert codes.get(200, 0) > 0
    assert set(codes) <= {200, 503}, codes  # only deliberate back-pressure
    assert grown < 100 * 2**20


def failed_reloads(url: str) -> float:
    m = re.search(r'sae_inspect_model_reloads_total\{model="parts",outcome="failed"\} (\S+)',
                  httpx.get(f"{url}/metrics").text)
    return float(m.group(1)) if m else 0.0


def inflight(url: str) -> float:
    m = re.search(r"^sae_inspect_inflight_requests (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_bad_artifacts_under_load_keep_the_old_model_serving(models_dir, artifact):
    with server_process(models_dir, SAE_INSPECT_WATCH_INTERVAL_S="0.2") as (url, proc):
        stop, results = threading.Event(), []

        def worker() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    r = c.post("/v1/models/parts/inspect", content=GOOD, headers=HDR)
                    results.append((r.status_code, r.json().get("model_version")))

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        good = artifact.read_bytes()
        target = models_dir / "parts.safetensors"
        tampered = bytearray(good)
        tampered[-100] ^= 0xFF
        wrong_version = good.replace(b"sae-inspect/2", b"sae-inspect/9", 1)
        for n, bad in enumerate((good[: len(good) // 3], bytes(tampered), wrong_version), 1):
            tmp = models_dir / ".incoming"
            tmp.write_bytes(bad)
            tmp.replace(target)
            wait_until(lambda n=n: failed_reloads(url) >= n)  # the watcher saw and rejected this one
        stop.set()
        for t in threads:
            t.join(60)
        failed = failed_reloads(url)
        ready = httpx.get(f"{url}/readyz").json()
    assert results and {s for s, _ in results} == {200}
    assert {v for _, v in results} == {"test-1"}
    assert failed == 3
    assert "parts" in ready["failed"] and ready["models"] == {"parts": "test-1"}


def test_sigterm_drains_in_flight_requests_and_restart_is_ready(models_dir, detector):
    """Eight requests are held inside the server (each has sent half its body) when SIGTERM arrives: all of
    them complete with 200, then the process exits. Holding them is what makes this deterministic: with
    bodies sent at once, fast inference could finish some before the others were in."""
    results: list[int] = []
    release = threading.Event()

    def body():
        yield GOOD[: len(GOOD) // 2]
        release.wait(60)
        yield GOOD[len(GOOD) // 2 :]

    with server_process(models_dir, SAE_INSPECT_MAX_BATCH_SIZE="2") as (url, proc):
        def one() -> None:
            try:
                with httpx.Client(base_url=url, timeout=60) as c:
                    results.append(c.post("/v1/models/parts/inspect", content=body(), headers=HDR).status_code)
            except httpx.HTTPError:
                results.append(0)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        # every request is inside the server before the signal (8 inspections + this scrape)
        wait_until(lambda: inflight(url) >= 9, timeout_s=30, poll_s=0.01)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the server is shutting down while the bodies are still arriving
        release.set()
        for t in threads:
            t.join(60)
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown completes
        assert proc.wait(60) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
    assert results == [200] * 8
    assert "Application shutdown complete" in log
    with server_process(models_dir) as (url, _):
        assert httpx.get(f"{url}/readyz").json()["ready"] is True


def test_no_pickle_loading_anywhere():
    offenders = []
    for path in [*ROOT.glob("models/**/*.py"), *ROOT.glob("training/**/*.py"), *ROOT.glob("service/**/*.py")]:
        text = path.read_text()
        if re.search(r"^\s*import pickle|^\s*from pickle|cPickle|dill", text, re.M):
            offenders.append(f"{path}: pickle import")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
    assert not offenders, offenders


def test_fit_into_read_only_folder_fails_clearly_and_keeps_previous(tmp_path, artifact, dataset, monkeypatch,
                                                                   capsys):
    from training.cli import main

    target = tmp_path / "line.safetensors"
    shutil.copy(artifact, target)
    real_access = __import__("os").access
    monkeypatch.setattr("training.cli.os.access",
                        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    assert main(["fit", str(dataset), "--out", str(target), "--steps", "5"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert target.read_bytes() == artifact.read_bytes()
