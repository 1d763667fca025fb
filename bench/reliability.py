"""Long reliability run against a real server process: load, hot swaps, bad artifacts, bad inputs, SIGTERM.

    python -m bench.reliability --model bench/work/fit_eval_magnetic_tile_default.safetensors

1. Sustained load: asyncio clients at concurrency 32 for --seconds (default 60). During it, a
   retrained artifact (same weights, new version) is swapped in every 10 s and a bad one
   (truncated, tampered, wrong format version) is dropped in between; every response must be
   200 or a deliberate 503, and must name a version that was really deployed.
2. The hostile-input corpus of tests/hostile.py, each case followed by a valid request.
3. SIGTERM while 16 requests are in flight: all must complete; a restart must come back ready.
RSS of the server is sampled throughout. Writes bench/results/reliability.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.fit_eval import machine
from bench.hostile import build_corpus, send
from bench.servers import rss_bytes, server_process
from models.artifact import load_artifact, save_artifact

ROOT = Path(__file__).resolve().parents[1]

MAX_BODY = 8 * 2**20


def versioned(src: Path, dst: Path, version: str) -> None:
    cfg, meta, tensors = load_artifact(src)
    meta["version"] = version
    tmp = dst.with_name(".swap.tmp")
    save_artifact(tmp, cfg, meta, tensors)
    tmp.replace(dst)


def bad_artifacts(src: Path) -> list[tuple[str, bytes]]:
    good = src.read_bytes()
    tampered = bytearray(good)
    tampered[-64] ^= 0xFF
    return [("truncated", good[: len(good) // 2]), ("tampered", bytes(tampered)),
            ("wrong format version", good.replace(b"sae-inspect/1", b"sae-inspect/7", 1))]


async def load(url: str, payloads: list[bytes], concurrency: int, seconds: float, rows: list) -> None:
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            k = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/models/line/inspect", content=payloads[k % len(payloads)],
                                     headers={"content-type": "application/octet-stream"})
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    rows.append((r.status_code, version, time.perf_counter() - t0))
                except httpx.HTTPError as e:
                    rows.append((0, repr(e), time.perf_counter() - t0))
                k += concurrency

    await asyncio.gather(*(client(i) for i in range(concurrency)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic_tile" / "test")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args()
    payloads = [x.read_bytes() for x in sorted(a.images.rglob("*.jpg"))[:100]]
    result: dict = {"machine": machine(), "model": a.model.name}
    with tempfile.TemporaryDirectory() as d:
        models = Path(d)
        target = models / "line.safetensors"
        versioned(a.model, target, "v0")
        env = {"SAE_INSPECT_WATCH_INTERVAL_S": "0.5", "SAE_INSPECT_QUEUE_SIZE": "64",
               "SAE_INSPECT_MAX_BODY_BYTES": str(MAX_BODY), "SAE_INSPECT_BODY_TIMEOUT_S": "2",
               "SAE_INSPECT_API_KEY": "bench-key"}
        corpus = [c for c in build_corpus(MAX_BODY)]
        for c in corpus:
            c.path = c.path.replace("/models/parts/", "/models/line/")
            if c.raw is not None:
                c.raw = c.raw.replace(b"/models/parts/", b"/models/line/")
        with server_process(models, **env) as (url, proc):
            rss = [rss_bytes(proc.pid)]
            deployed, rejected = ["v0"], []
            rows: list = []
            stop = threading.Event()

            def churn() -> None:
                i = 0
                while not stop.wait(5):
                    if i % 2 == 0:
                        name, data = bad_artifacts(a.model)[(i // 2) % 3]
                        tmp = models / ".bad.tmp"
                        tmp.write_bytes(data)
                        tmp.replace(target)
                        rejected.append(name)
                    else:
                        deployed.append(f"v{len(deployed)}")
                        versioned(a.model, target, deployed[-1])
                    rss.append(rss_bytes(proc.pid))
                    i += 1

            t = threading.Thread(target=churn)
            t.start()
            print(f"load: concurrency {a.concurrency} for {a.seconds:.0f} s with artifact churn...", flush=True)
            asyncio.run(load(url, payloads, a.concurrency, a.seconds, rows))
            stop.set()
            t.join()
            time.sleep(1.5)
            rss.append(rss_bytes(proc.pid))
            codes: dict[int, int] = {}
            for s, _, _ in rows:
                codes[s] = codes.get(s, 0) + 1
            versions = {v for s, v, _ in rows if s == 200}
            lat = np.array([t for s, _, t in rows if s == 200]) * 1000
            metrics = httpx.get(f"{url}/metrics").text
            failed_reloads = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                 if line.startswith("sae_inspect_model_reloads_total") and 'outcome="failed"' in line)
            result["load"] = {
                "concurrency": a.concurrency, "seconds": a.seconds, "requests": len(rows), "status_counts": codes,
                "errors_5xx_other_than_503": sum(v for k, v in codes.items() if k >= 500 and k != 503)
                + codes.get(0, 0),
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "versions_deployed": deployed, "versions_seen": sorted(versions),
                "unknown_versions": sorted(versions - set(deployed)),
                "bad_artifacts_dropped": rejected, "failed_reloads_counted": failed_reloads,
                "rss_mb_start_end_max": [rss[0] / 2**20, rss[-1] / 2**20, max(rss) / 2**20]}
            print(result["load"], flush=True)
            versioned(a.model, target, "final")
            time.sleep(1.5)
            base = rss_bytes(proc.pid)
            outcomes = []
            for case in corpus:
                status, body, _ = send(url, case)
                after = httpx.post(f"{url}/v1/models/line/inspect", content=payloads[0],
                                   headers={"content-type": "image/jpeg"}, timeout=60).status_code
                outcomes.append({"case": case.name, "expected": sorted(case.expected), "status": status,
                                 "ok": status in case.expected and after == 200})
            result["hostile"] = {"cases": len(outcomes), "passed": sum(o["ok"] for o in outcomes),
                                 "rss_growth_mb": (rss_bytes(proc.pid) - base) / 2**20,
                                 "failures": [o for o in outcomes if not o["ok"]]}
            print({k: v for k, v in result["hostile"].items()}, flush=True)
            codes_term: list[int] = []

            def one() -> None:
                try:
                    with httpx.Client(base_url=url, timeout=120) as c:
                        codes_term.append(c.post("/v1/models/line/inspect", content=payloads[1],
                                                 headers={"content-type": "image/jpeg"}).status_code)
                except httpx.HTTPError:
                    codes_term.append(0)

            threads = [threading.Thread(target=one) for _ in range(16)]
            for th in threads:
                th.start()
            deadline = time.time() + 60
            while time.time() < deadline:  # signal only once all 16 are inside the server
                m = [ln for ln in httpx.get(f"{url}/metrics").text.splitlines()
                     if ln.startswith("sae_inspect_inflight_requests ")]
                if m and float(m[0].split()[1]) >= 17:  # 16 inspections + this scrape
                    break
            proc.send_signal(signal.SIGTERM)
            for th in threads:
                th.join(120)
            proc.wait(120)
        with server_process(models) as (url2, _):
            ready = httpx.get(f"{url2}/readyz").json()["ready"]
        result["sigterm"] = {"in_flight": 16, "completed_200": codes_term.count(200), "restart_ready": ready}
        print(result["sigterm"], flush=True)
    out = ROOT / "bench" / "results"
    (out / "reliability.json").write_text(json.dumps(result, indent=2))
    ld, ho, st = result["load"], result["hostile"], result["sigterm"]
    md = (f"Machine: {machine()}; command: `python -m bench.reliability --model {a.model}`\n\n"
          "| check | result |\n|---|---|\n"
          f"| load: concurrency {ld['concurrency']}, {ld['seconds']:.0f} s | {ld['requests']} requests, "
          f"statuses {ld['status_counts']}, {ld['errors_5xx_other_than_503']} errors besides back-pressure 503s, "
          f"p50 {ld['p50_ms']:.0f} ms, p99 {ld['p99_ms']:.0f} ms |\n"
          f"| hot swaps during load | {len(ld['versions_deployed']) - 1} new versions deployed, responses named "
          f"{len(ld['versions_seen'])} versions, {len(ld['unknown_versions'])} unknown |\n"
          f"| bad artifacts during load | {len(ld['bad_artifacts_dropped'])} dropped "
          f"({', '.join(sorted(set(ld['bad_artifacts_dropped'])))}), {ld['failed_reloads_counted']:.0f} failed "
          f"reloads counted, old model kept serving |\n"
          f"| server memory (RSS MB start / end / max) | {ld['rss_mb_start_end_max'][0]:.0f} / "
          f"{ld['rss_mb_start_end_max'][1]:.0f} / {ld['rss_mb_start_end_max'][2]:.0f} |\n"
          f"| hostile inputs | {ho['passed']} / {ho['cases']} got the documented status and a valid request after "
          f"each succeeded; RSS growth {ho['rss_growth_mb']:.1f} MB |\n"
          f"| SIGTERM with 16 requests in flight | {st['completed_200']} / 16 completed with 200; restart ready: "
          f"{st['restart_ready']} |\n")
    (out / "reliability.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
