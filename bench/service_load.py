"""Drive a running service over loopback at several concurrencies; compare with the bare model.

    python -m bench.service_load --model bench/work/accuracy_magnetic_tile.safetensors \
        --images ../shared/datasets/magnetic_tile/test

Starts `sae-inspect-serve` on a free port with a copy of the artifact, then for each concurrency (1, 8, 32) runs
an unmeasured warm-up load (half a round, at least three batches: a server's first seconds at a new load run
slower, down to 0.75 x on the 640 px model; its ratio is kept as `warm_up_ratio` and listed under the table) and
then `--rounds` interleaved rounds, each of them: the bare model in this process (`Detector.inspect` on the same
images, already decoded, at batch 1 and at batch 8, after a warm-up of at least a second at each: ONNX Runtime's
first batches at a new shape run at half speed), then closed-loop asyncio clients against the server for
`--seconds` (at least 88 images' time in process: a heavy model's replies come a batch at a time). A round's
ratio is the service's steady-state rate (``bench.load.steady_rate``: the ramp and the tail left out) over the
better of the two bare rates measured just before it: the machine's speed drifts by several per cent within
minutes, so a ceiling measured once, minutes away from the server's run, moves the ratio by as much as the
service's own overhead. The median and the range over rounds are reported, with latency percentiles over every
reply. CPU accounting (the server's and the load generator's CPU seconds per image, from /proc and process_time,
against the bare model's own) shows where the 2 cores go: the load generator runs on the same cores as the
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.fit_eval import machine
from bench.load import load, steady_rate, summary
from bench.servers import cpu_times

ROOT = Path(__file__).resolve().parents[1]


def bare_rates(det, decoded: list, seconds: float) -> dict[str, float]:
    """In-process images/s and CPU ms per image of `det.inspect` at batch 1 and 8, `seconds` each after a warm-up."""
    out = {}
    for bs in (1, 8):
        t0, n = time.perf_counter(), 0
        while n < 3 * bs or time.perf_counter() - t0 < 1.0:  # warm-up: the runtime's first batches of a shape
            det.inspect(decoded[:bs])
            n += bs
        n, t0, c0 = 0, time.perf_counter(), os.times()
        while time.perf_counter() - t0 < seconds:
            det.inspect([decoded[(n + j) % len(decoded)] for j in range(bs)])
            n += bs
        c1 = os.times()
        out[f"bare_images_per_s_batch{bs}"] = n / (time.perf_counter() - t0)
        out[f"bare_cpu_ms_per_image_batch{bs}"] = 1000 * (c1.user + c1.system - c0.user - c0.system) / n
        out[f"bare_system_ms_per_image_batch{bs}"] = 1000 * (c1.system - c0.system) / n
    return out


def best(bare: dict[str, float]) -> tuple[int, float]:
    """(batch, images/s) of the faster of the bare batch sizes."""
    bs = max((1, 8), key=lambda b: bare[f"bare_images_per_s_batch{b}"])
    return bs, bare[f"bare_images_per_s_batch{bs}"]


def run_concurrency(url: str, server_pid: int, det, decoded: list, payloads: list[bytes], concurrency: int,
                    rounds: int, seconds: float) -> dict:
    """`rounds` x (bare model, then the service under `concurrency` clients) -> one table row."""
    replies, per_round, load_wall, server_cpu, server_sys, client_cpu = [], [], 0.0, 0.0, 0.0, 0.0
    _, rate = best(bare_rates(det, decoded, seconds / 4))
    t0, warm = time.perf_counter(), 8 / rate  # the warm-up load: its rate is reported, never counted
    window = max(seconds / 2, 3 * warm)
    cold = steady_rate(asyncio.run(load(url, "bench", payloads, concurrency, warm + window)), t0, warm, window) / rate
    print(f"warm-up load (not counted): {cold:.2f} x in-process", flush=True)
    for _ in range(rounds):
        bare = bare_rates(det, decoded, seconds / 2)
        bs, rate = best(bare)
        warm = 8 / rate  # eight images' time in process (one or two CPU batches): the ramp left out
        window = max(seconds - warm, 10 * warm)  # a heavy model's replies come a batch at a time: count many
        t0, c0, (u0, s0) = time.perf_counter(), time.process_time(), cpu_times(server_pid)
        got = asyncio.run(load(url, "bench", payloads, concurrency, warm + window))
        load_wall += time.perf_counter() - t0
        u1, s1 = cpu_times(server_pid)
        server_cpu += u1 + s1 - u0 - s0
        server_sys += s1 - s0
        client_cpu += time.process_time() - c0
        steady = steady_rate(got, t0, warm, window)
        replies += got
        per_round.append({**bare, "steady_images_per_s": steady, "ratio": steady / rate, "bare_batch": bs,
                          "bare_images_per_s": rate,
                          "bare_cpu_ms_per_image": bare[f"bare_cpu_ms_per_image_batch{bs}"],
                          "bare_system_ms_per_image": bare[f"bare_system_ms_per_image_batch{bs}"]})
        print(per_round[-1], flush=True)
    row = summary(replies, load_wall, concurrency)
    ok = max(row["ok"], 1)
    med = statistics.median
    return {**row, "rounds": per_round, "warm_up_ratio": cold,
            "steady_images_per_s": med(r["steady_images_per_s"] for r in per_round),
            "bare_images_per_s": med(r["bare_images_per_s"] for r in per_round),
            "bare_cpu_ms_per_image": med(r["bare_cpu_ms_per_image"] for r in per_round),
            "bare_system_ms_per_image": med(r["bare_system_ms_per_image"] for r in per_round),
            "bare_batches": sorted({r["bare_batch"] for r in per_round}),
            "ratio": med(r["ratio"] for r in per_round), "ratio_min": min(r["ratio"] for r in per_round),
            "ratio_max": max(r["ratio"] for r in per_round),
            "server_cpu_ms_per_image": 1000 * server_cpu / ok, "server_system_ms_per_image": 1000 * server_sys / ok,
            "client_cpu_ms_per_image": 1000 * client_cpu / ok}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=10, help="load seconds per round (bare: half of it per batch)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    p.add_argument("--max-batch", type=int, default=None,
                   help="the server's micro-batch size (SAE_INSPECT_MAX_BATCH_SIZE); default: the service's own")
    p.add_argument("--name", default=None, help="results file name under bench/results (default: "
                   "service_load_onnxruntime when the export is served, service_load otherwise)")
    a = p.parse_args()
    # the service's default: the export beside the artifact serves on CPU when onnxruntime is installed
    export = a.model.with_suffix(".onnx")
    served = export if export.exists() and a.device == "cpu" and importlib.util.find_spec("onnxruntime") else a.model
    runtime = "onnxruntime" if served.suffix == ".onnx" else "pytorch"
    images = sorted(x for x in a.images.rglob("*") if x.suffix.lower() in (".png", ".jpg", ".jpeg"))[:200]
    payloads = [x.read_bytes() for x in images]
    from models.portable import load_scorer

    det = load_scorer(served, a.device)
    decoded = [det.read(x) for x in images[:64]]
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(a.model, Path(d) / "bench.safetensors")
        if served != a.model:
            shutil.copy(served, Path(d) / "bench.onnx")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SAE_INSPECT_MODELS_DIR": d, "SAE_INSPECT_DEVICE": a.device,
               "SAE_INSPECT_QUEUE_SIZE": "256"}
        if a.max_batch:
            env["SAE_INSPECT_MAX_BATCH_SIZE"] = str(a.max_batch)
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
            for c in a.concurrency:
                print(f"concurrency {c}...", flush=True)
                rows.append(run_concurrency(url, server.pid, det, decoded, payloads, c, a.rounds, a.seconds))
        finally:
            server.terminate()
            server.wait(30)
    result = {"machine": machine(), "model": a.model.name, "runtime": runtime, "images": str(a.images),
              "rounds": a.rounds, "seconds": a.seconds, "max_batch": a.max_batch, "rows": rows}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = a.name or ("service_load" if runtime == "pytorch" else f"service_load_{runtime}")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    batch = f"micro-batch {a.max_batch}" if a.max_batch else "the service's default micro-batch"
    lines = [f"Machine: {machine()}; images: `{a.images}`; {a.rounds} interleaved rounds of {a.seconds:g} s per "
             f"row; runtime served: {runtime} ({served.name}), {batch}; command: `python -m bench.service_load "
             f"--model {a.model} --images {a.images}" + (f" --max-batch {a.max_batch}" if a.max_batch else "")
             + (f" --concurrency {' '.join(map(str, a.concurrency))}" if a.concurrency != [1, 8, 32] else "")
             + (f" --name {a.name}`" if a.name else "`"), "",
             "Each round: the bare model in this process (no HTTP, same runtime, images already decoded) at batch 1 "
             "and 8, then the service. steady-state images/s: the replies that arrived after one batch's time in "
             "process and before the clients stopped sending, over that window (bench/load.py:steady_rate); "
             "x in-process: that over the better bare rate of the same round (median over rounds, and its range); "
             "latency over every reply of every round. CPU ms/image: user + system, the system part in brackets "
             "(sockets, thread wake-ups); in-process: the better bare batch's, median over rounds.", "",
             "| concurrency | requests | 200 OK | other statuses | steady-state images/s | in-process images/s "
             "(batch) | x in-process (range) | p50 ms | p99 ms | server CPU ms/image | in-process CPU ms/image "
             "| load generator CPU ms/image | load generator share of CPU used |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        other = {k: v for k, v in r["status_counts"].items() if k != 200}
        srv, cli = r["server_cpu_ms_per_image"], r["client_cpu_ms_per_image"]
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {other or '-'} | "
                     f"{r['steady_images_per_s']:.1f} | {r['bare_images_per_s']:.1f} "
                     f"({'/'.join(map(str, r['bare_batches']))}) | "
                     f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {srv:.1f} ({r['server_system_ms_per_image']:.1f}) | "
                     f"{r['bare_cpu_ms_per_image']:.1f} ({r['bare_system_ms_per_image']:.1f}) | "
                     f"{cli:.1f} | {cli / (srv + cli):.0%} |")
    lines += ["", "Warm-up load before each concurrency's rounds (not counted), x in-process: " + ", ".join(
        f"concurrency {r['concurrency']} {r['warm_up_ratio']:.2f}" for r in rows) + "."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
