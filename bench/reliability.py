"""Long reliability run against a real server process: load, hot swaps, bad artifacts, bad inputs, SIGTERM.

    python -m bench.reliability --model bench/work/fit_eval_magnetic_tile_default.safetensors

1. Sustained load: asyncio clients at concurrency 32 for --seconds (default 60). During it, a
   retrained artifact (same weights, new version) is swapped in every 10 s and a bad one
   (truncated, tampered, wrong format version) is dropped in between; every response must be
   200 or a deliberate 503, and must name a version that was really deployed.
2. The hostile-input corpus of bench/hostile.py, each case followed by a valid request.
3. Memory: two concurrent batches of 16 PNGs of 6000 x 6000 pixels (0.15 MB each on the wire);
   peak RSS growth against the bound in the README.
4. Slow clients: 200 idle sockets and 20 clients dripping a body one byte every 0.5 s while 4
   clients send valid requests for 20 s: when each was cut off, and what the valid ones got.
5. SIGTERM while 16 requests are in flight: all must complete; a restart must come back ready.
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
from bench.images import huge_png
from bench.load import load
from bench.parse_cost import CLASSES, PER_IMAGE_BOUND, class_memory, healthz_under_uploads
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
            ("wrong format version", good.replace(b"sae-inspect/2", b"sae-inspect/7", 1))]


def memory_phase(url: str, pid: int, batches: int = 2, per_batch: int = 16) -> dict:
    files = [("files", (f"h{i}.png", huge_png(6000, 6000), "image/png")) for i in range(per_batch)]
    base, peak, done = rss_bytes(pid), rss_bytes(pid), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.01)

    statuses: list[int] = []

    def batch() -> None:
        r = httpx.post(f"{url}/v1/models/line/inspect/batch", files=files, timeout=300)
        statuses.extend([x.get("status", 200) for x in r.json()["results"]] if r.status_code == 200
                        else [r.status_code] * per_batch)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    workers = [threading.Thread(target=batch) for _ in range(batches)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    sampler.join()
    return {"images": batches * per_batch, "pixels_each": 36_000_000, "seconds": time.perf_counter() - t0,
            "scored": statuses.count(200), "answered_503": statuses.count(503),
            "peak_rss_growth_mb": (peak - base) / 2**20}


def slow_phase(url: str, payload: bytes, idle_n: int = 200, drip_n: int = 20, seconds: float = 20.0) -> dict:
    import socket

    host, port = url.removeprefix("http://").split(":")
    cut_idle: list[float] = []
    cut_drip: list[tuple[float, bytes]] = []
    t0 = time.perf_counter()

    def idle() -> None:
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(seconds + 5)
            try:
                s.recv(1)
            except OSError:
                pass
            cut_idle.append(time.perf_counter() - t0)

    def drip() -> None:
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/models/line/inspect HTTP/1.1\r\nHost: x\r\ncontent-type: image/jpeg\r\n"
                      b"content-length: 100000\r\n\r\n")
            start, answer = time.perf_counter(), b""
            s.settimeout(0.5)
            while time.perf_counter() - t0 < seconds + 5 and not answer:
                try:
                    s.sendall(b"\0")
                    answer = s.recv(200)
                except TimeoutError:
                    continue
                except OSError:
                    break
            cut_drip.append((time.perf_counter() - start, answer[:12]))

    valid: list[tuple[int, float]] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() - t0 < seconds:
                s = time.perf_counter()
                try:
                    code = c.post("/v1/models/line/inspect", content=payload,
                                  headers={"content-type": "image/jpeg"}).status_code
                except httpx.HTTPError:
                    code = 0
                valid.append((code, time.perf_counter() - s))

    threads = [threading.Thread(target=f) for f in [idle] * idle_n + [drip] * drip_n + [client] * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 30)
    codes: dict[int, int] = {}
    for c, _ in valid:
        codes[c] = codes.get(c, 0) + 1
    lat = np.array([t for c, t in valid if c == 200]) * 1000
    return {"idle_sockets": idle_n, "idle_cut": len(cut_idle), "idle_cut_after_s_max": max(cut_idle, default=-1),
            "drippers": drip_n, "drip_408": sum(a.startswith(b"HTTP/1.1 408") for _, a in cut_drip),
            "drip_cut_after_s_max": max((t for t, _ in cut_drip), default=-1), "valid_status_counts": codes,
            "valid_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "valid_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}


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
            rows.extend(asyncio.run(load(url, "line", payloads, a.concurrency, a.seconds)))
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
            result["memory"] = memory_phase(url, proc.pid)
            print(result["memory"], flush=True)
            result["slow"] = slow_phase(url, payloads[0])
            print(result["slow"], flush=True)
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
        with server_process(models) as (url2, proc2):  # default settings: the 32 MiB body limit admits the bombs
            ready = httpx.get(f"{url2}/readyz").json()["ready"]
            for kind in CLASSES:  # warm: allocator pools and lazy imports are not growth
                class_memory(url2, proc2.pid, "line", kind)
            result["parse_cost"] = [class_memory(url2, proc2.pid, "line", kind) for kind in CLASSES]
            result["event_loop"] = healthz_under_uploads(url2, "line", seconds=15)
            print(result["parse_cost"], result["event_loop"], flush=True)
        result["sigterm"] = {"in_flight": 16, "completed_200": codes_term.count(200), "restart_ready": ready}
        print(result["sigterm"], flush=True)
    out = ROOT / "bench" / "results"
    (out / "reliability.json").write_text(json.dumps(result, indent=2))
    ld, ho, st, me, sl = result["load"], result["hostile"], result["sigterm"], result["memory"], result["slow"]
    ev = result["event_loop"]
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
          f"| memory: 2 concurrent batches of 16 PNGs of 6000 x 6000 px | {me['scored']} scored, "
          f"{me['answered_503']} answered 503 + Retry-After (decode budget busy) in {me['seconds']:.0f} s; peak RSS "
          f"growth {me['peak_rss_growth_mb']:.0f} MB (bound 512 MB) |\n"
          + "".join(f"| memory, one upload: {r['class']} ({r['bytes'] / 2**20:.2f} MB on the wire) | status "
                    f"{r['status']} (expected {r['expected']}); peak RSS growth {r['rss_growth_mb']:.0f} MB "
                    f"(bound {PER_IMAGE_BOUND // 2**20} MB) |\n" for r in result["parse_cost"])
          + f"| event loop: /healthz every 20 ms for 15 s while 3 clients upload every class above without pause | "
          f"p50 {ev['healthz_p50_ms']:.1f} ms, p99 {ev['healthz_p99_ms']:.1f} ms, max {ev['healthz_max_ms']:.1f} ms "
          f"(bound: p99 100 ms); {ev['uploads_answered']} uploads answered, statuses {ev['upload_statuses']} |\n"
          f"| slow clients: {sl['idle_sockets']} idle sockets, {sl['drippers']} bodies dripped 1 byte / 0.5 s, "
          f"4 valid clients for 20 s | {sl['idle_cut']} idle cut, the last after {sl['idle_cut_after_s_max']:.1f} s "
          f"(header deadline 10 s); {sl['drip_408']} drippers got 408, the last after "
          f"{sl['drip_cut_after_s_max']:.1f} s (body deadline 2 s); valid requests {sl['valid_status_counts']}, "
          f"p50 {sl['valid_p50_ms']:.0f} ms, p99 {sl['valid_p99_ms']:.0f} ms |\n"
          f"| SIGTERM with 16 requests in flight | {st['completed_200']} / 16 completed with 200; restart ready: "
          f"{st['restart_ready']} |\n")
    (out / "reliability.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
