"""A real uvicorn on 127.0.0.1: reload under load, back-pressure, automatic pick-up."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench.images import part_png
from bench.servers import running_server, wait_until
from service.settings import Settings
from tests.helpers import save_version

GOOD = part_png(201)
HDR = {"content-type": "image/png"}


def test_hot_reload_under_load_loses_no_request(models_dir, detector):
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0, api_key="k", max_batch_size=4)
    with running_server(settings) as url:
        stop = threading.Event()
        results: list[tuple[int, str]] = []

        def worker() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/v1/models/parts/inspect", content=GOOD, headers=HDR)
                        results.append((r.status_code, r.json().get("model_version", "")))
                    except httpx.HTTPError as e:  # a lost request is a failure, not a silent thread death
                        results.append((0, repr(e)))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        versions = ["test-1"]
        with httpx.Client(base_url=url, timeout=60, headers={"authorization": "Bearer k"}) as admin:
            for i in range(3):
                wait_until(lambda n=len(results): len(results) >= n + 3)  # traffic between swaps
                versions.append(f"v{i}")
                save_version(detector, models_dir / "parts.safetensors", versions[-1])
                assert admin.post("/v1/models/parts/reload").json()["version"] == versions[-1]
        wait_until(lambda: sum(v == versions[-1] for _, v in results) >= 4)  # the last version serves
        stop.set()
        for t in threads:
            t.join(60)
    codes = [c for c, _ in results]
    assert len(results) >= 8 and set(codes) == {200}, codes
    assert {v for _, v in results} <= set(versions)
    assert results[-1][1] == versions[-1]


@pytest.mark.parametrize("query", ["", "?explain=true"])
def test_full_queue_answers_503_with_retry_after(models_dir, query):
    """Plain and explain requests share one bounded queue: both get back-pressure."""
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0, queue_size=1, max_batch_size=1)
    with running_server(settings) as url:
        def send(_: int) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=60) as c:
                return c.post(f"/v1/models/parts/inspect{query}", content=GOOD, headers=HDR)

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, range(16)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503} and codes.count(200) >= 1
        busy = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded" for r in busy)
        assert send(0).status_code == 200  # recovers once load drops


def test_watcher_picks_up_new_and_changed_artifacts(models_dir, detector):
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0.2)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        save_version(detector, models_dir / "line7.safetensors", "w-1")
        save_version(detector, models_dir / "parts.safetensors", "w-2")
        wait_until(lambda: {m["name"]: m["version"] for m in c.get("/v1/models").json()}
                   == {"parts": "w-2", "line7": "w-1"})
        (models_dir / "junk.safetensors").write_bytes(b"not an artifact")
        wait_until(lambda: "junk" in c.get("/readyz").json()["failed"])
        ready = c.get("/readyz").json()
        assert "junk" in ready["failed"] and "junk" not in ready["models"]
        assert c.post("/v1/models/parts/inspect", content=GOOD, headers=HDR).status_code == 200


def test_full_queue_gives_batches_back_pressure_too(models_dir):
    """Batch images share the same queue: with it full, images get 503 (per image, or the whole batch
    with Retry-After when none got in), and the service recovers."""
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0, queue_size=1, max_batch_size=1)
    files = [("files", (f"{i}.png", GOOD, "image/png")) for i in range(3)]
    with running_server(settings) as url:
        def send(_: int) -> httpx.Response:
            return httpx.post(f"{url}/v1/models/parts/inspect/batch", files=files, timeout=60)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(send, range(12)))
        whole = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded" for r in whole)
        items = [x for r in responses if r.status_code == 200 for x in r.json()["results"]]
        refused = [x for x in items if "score" not in x]
        assert all(x["status"] == 503 and x["error"] == "overloaded" for x in refused)
        assert whole or refused, "a full queue must push back on batch images"
        assert any("score" in x for x in items)
        assert send(0).status_code == 200
