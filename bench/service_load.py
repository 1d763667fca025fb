"""Drive a running service over loopback at several concurrencies; compare with the bare model.

    python -m bench.service_load --model bench/work/accuracy_magnetic_tile.safetensors \
        --images ../shared/datasets/magnetic_tile/test

Starts `sae-inspect-serve` on a free port with a copy of the artifact, then for each
concurrency (1, 8, 32) runs closed-loop asyncio clients for `--seconds`, and records
throughput (over the whole run, and in steady state: ``bench.load.steady_rate``, the ramp and the
tail left out) and latency percentiles. The bare forward throughput (Detector.inspect in
this process, batch 1 and batch 8, same images) is the ceiling the service approaches. CPU
accounting (the server's and the load generator's CPU seconds per image, from /proc and
process_time) shows where the 2 cores go: the load generator runs on the same cores as the
service, so its share is stated beside each row.
With `<model>.onnx` beside the artifact (a fit writes it) and onnxruntime installed, the service
serves the export on CPU (its default) and the bare figure is the export's: results go to
bench/results/service_load_onnxruntime.json and .md; otherwise to service_load.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.fit_eval import machine
from bench.load import load, steady_rate, summary
from bench.servers import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]


def bare_throughput(model: Path, images: list[Path], seconds: float, device: str) -> dict[str, float]:
    from models.portable import load_scorer

    det = load_scorer(model, device)
    decoded = [det.read(p) for p in images[:64]]
    out = {}
    for bs in (1, 8):
        det.inspect(decoded[:bs])
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            det.inspect([decoded[(n + j) % len(decoded)] for j in range(bs)])
            n += bs
        out[f"bare_images_per_s_batch{bs}"] = n / (time.perf_counter() - t0)
        out[f"bare_cpu_ms_per_image_batch{bs}"] = 1000 * (time.process_time() - c0) / n
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    a = p.parse_args()
    # the service's default: the export beside the artifact serves on CPU when onnxruntime is installed
    export = a.model.with_suffix(".onnx")
    served = export if export.exists() and a.device == "cpu" and importlib.util.find_spec("onnxruntime") else a.model
    runtime = "onnxruntime" if served.suffix == ".onnx" else "pytorch"
    images = sorted(x for x in a.images.rglob("*") if x.suffix.lower() in (".png", ".jpg", ".jpeg"))[:200]
    payloads = [x.read_bytes() for x in images]
    print("bare model throughput...", flush=True)
    bare = bare_throughput(served, images, a.seconds / 2, a.device)
    print(bare, flush=True)
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(a.model, Path(d) / "bench.safetensors")
        if served != a.model:
            shutil.copy(served, Path(d) / "bench.onnx")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SAE_INSPECT_MODELS_DIR": d, "SAE_INSPECT_DEVICE": a.device,
               "SAE_INSPECT_QUEUE_SIZE": "256", "SAE_INSPECT_MAX_BATCH_SIZE": "8"}
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "--port", str(port), "--log-level", "warning"],
                                  env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            rows = []
            warm = 8 / bare["bare_images_per_s_batch8"]  # one batch's time in process: the ramp left out
            for c in a.concurrency:
                print(f"concurrency {c}...", flush=True)
                t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_seconds(server.pid)
                replies = asyncio.run(load(url, "bench", payloads, c, a.seconds))
                rows.append(summary(replies, time.perf_counter() - t0, c))
                rows[-1]["steady_images_per_s"] = steady_rate(replies, t0, warm, a.seconds - warm)
                ok = max(rows[-1]["ok"], 1)
                rows[-1]["server_cpu_ms_per_image"] = 1000 * (cpu_seconds(server.pid) - s0) / ok
                rows[-1]["client_cpu_ms_per_image"] = 1000 * (time.process_time() - c0) / ok
                print(rows[-1], flush=True)
        finally:
            server.terminate()
            server.wait(30)
    result = {"machine": machine(), "model": a.model.name, "runtime": runtime, "images": str(a.images), **bare,
              "rows": rows}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "service_load" if runtime == "pytorch" else f"service_load_{runtime}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"Machine: {machine()}; images: `{a.images}`; {a.seconds:g} s per row; runtime served: {runtime} "
             f"({served.name}); command: `python -m bench.service_load --model {a.model} --images {a.images}`", "",
             f"Bare model (no HTTP, same runtime): {bare['bare_images_per_s_batch1']:.1f} images/s at batch 1, "
             f"{bare['bare_images_per_s_batch8']:.1f} images/s at batch 8.", "",
             f"In-process CPU per image: {bare['bare_cpu_ms_per_image_batch1']:.1f} ms at batch 1, "
             f"{bare['bare_cpu_ms_per_image_batch8']:.1f} ms at batch 8 (all cores together).", "",
             "images/s: every 200 reply over the whole run; steady state: the replies that arrived after one batch's "
             "time in process and before the clients stopped sending, over that window (bench/load.py:steady_rate), "
             "and its ratio to the bare model at batch 8.", "",
             "| concurrency | requests | 200 OK | other statuses | images/s | steady-state images/s "
             "| x bare batch 8 | p50 ms | p99 ms | server CPU ms/image | load generator CPU ms/image "
             "| load generator share of CPU used |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        other = {k: v for k, v in r["status_counts"].items() if k != 200}
        srv, cli = r["server_cpu_ms_per_image"], r["client_cpu_ms_per_image"]
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {other or '-'} | "
                     f"{r['images_per_s']:.1f} | {r['steady_images_per_s']:.1f} | "
                     f"{r['steady_images_per_s'] / bare['bare_images_per_s_batch8']:.2f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {srv:.1f} | {cli:.1f} | "
                     f"{cli / (srv + cli):.0%} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
