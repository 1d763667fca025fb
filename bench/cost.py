"""What inference costs beyond the backbone, in one process, in interleaved rounds.

    python -m bench.cost --model bench/work/accuracy_deeppcb.safetensors

For three image sizes (a 256 px part, a 900 x 900 part, a 4096 x 256 strip; generated parts
saved as PNG) and batch 1 and 8, each round times, one after the other:
  bare      the backbone's forward on prepared canvases (the ceiling);
  bare_offline  the same forward in the runtime the fit and evaluation use (models.backbone_runtime);
  maps      Detector.maps on decoded pictures;
  inspect   Detector.inspect on decoded pictures;
  file      decode + Detector.inspect from PNG bytes;
  http      the service (a server process, the model and its export side by side as a fit leaves them,
            so it serves its default runtime: ONNX Runtime on CPU) at concurrency 1 (batch-1 rows) and
            8 (batch-8 rows), its steady-state rate (`http_rate`); at concurrency 8 also a second server
            with SAE_INSPECT_CPU_TURNS=false (uploads decoded while a batch runs: service/turns.py);
  onnx      PortableDetector.inspect (the exported model in ONNX Runtime) on decoded pictures;
  onnx_file decode + PortableDetector.inspect from PNG bytes: what the service does per image, in process;
  openvino  the same ONNX file compiled by OpenVINO (f32), canvases to maps only (when installed).
The median over rounds is reported as images/s and as a ratio to `bare` of the same size and
batch. For the http rows a second table sets the service against `onnx_file` and `onnx` and states
where a request's time goes on the server (its own median decode / queue / inference times, from
each reply's `timings`) and how much of the 2 cores the load generator itself used (its process's CPU
seconds over the run's wall seconds). A torch.profiler breakdown of Detector.canvas_pass (900 px,
batch 8) gives each stage's share. Fit time: each shared set's fit from bench/results/accuracy.json
(ours: `fit_calibrated` and its phases; anomalib PaDiM and PatchCore: `Engine.fit`), plus the time of the export a fit
writes beside the artifact, measured here on each bench/work/accuracy_<set>.safetensors (the
same call and 16 validation images as `sae-inspect fit`). Writes bench/results/cost.{json,md}.
Run it on a quiet machine: ratios taken under load swing by a factor of two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from bench.accuracy import PATCHCORE, PEER_SIZES, peer_name
from bench.fit_eval import machine
from bench.images import encode
from bench.load import load, steady_rate, summary
from bench.servers import server_process
from models.backbone_runtime import offline_backbone
from models.detector import Detector
from models.features import to_batch
from models.portable import PortableDetector
from models.preprocess import make_canvases
from models.synthetic import good_part

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "bench" / "work" / "accuracy_deeppcb.safetensors"
"""The default fit on deeppcb (`bench.accuracy`): 640 px, the canvas the fit takes for images of 640 px or more (since
2026-12-04 evening; training/canvas.py), so the model a line sending 900 x 900 parts or long strips gets by default.
Until then the rows were a 512 px magnetic_tile fit's (`bench.accuracy --variants size512`), kept in
bench/results/cost_default512.{json,md}. The rows of bench/results/cost.md are this model's."""
SIZES = {"256 px part": (256, 256), "900x900 part": (900, 900), "4096x256 strip": (256, 4096)}


def images_of(hw: tuple[int, int], n: int = 8) -> list[bytes]:
    out = []
    for i in range(n):
        img = good_part(np.random.default_rng(100 + i))
        out.append(encode(Image.fromarray(cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)), "PNG"))
    return out


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Images per second of `fn` (which returns how many images it handled), run for ~`seconds`."""
    fn()  # warm
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def http_rate(url: str, payloads: list[bytes], concurrency: int, batch_s: float, seconds: float) -> dict:
    """The service's steady-state images/s at `concurrency`: replies that arrive inside a window of at least ten
    batches (`batch_s`: one batch's time in process), after one batch's time of warm-up, over the window's length.
    Counting every reply over the whole run instead would charge the ramp (all clients decoding at once) and the
    tail (the last batch, after the clients stopped sending) to the service: a third of a 4 s run of a 640 px model,
    whose batch of 8 takes 1.5 s."""
    warm, window = batch_s, max(seconds, 10 * batch_s)
    t0, c0 = time.perf_counter(), time.process_time()
    replies = asyncio.run(load(url, "line", payloads, concurrency, warm + window))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**summary(replies, wall, concurrency), "images_per_s": steady_rate(replies, t0, warm, window),
            "window_s": window, "client_cores": cpu / wall}


def profile(det: Detector, canvases: np.ndarray) -> dict[str, float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    det.canvas_pass(canvases)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            det.canvas_pass(canvases)
    stages = ("backbone", "features", "sae_encode", "sae_decode", "maps")
    totals = {e.key: e.cpu_time_total / 5 / 1e3 for e in prof.key_averages() if e.key in stages}
    totals["features"] = totals.get("features", 0.0) - totals.get("backbone", 0.0)  # features wraps backbone
    return {f"{k}_ms": totals.get(k, 0.0) for k in stages}


def export_times(model: Path) -> dict[str, float]:
    """Seconds of the validated export (`sae-inspect fit`'s own call) of `model` and of every
    bench/work/accuracy_<set>.safetensors; each export is written beside its artifact."""
    from training.data import good_images
    from training.export import export_onnx, validation_sample

    out = {}
    # keyed by set name, so the --model that is itself an accuracy model is exported once, not twice
    models = {m.stem.removeprefix("accuracy_"): m
              for m in [model, *sorted((ROOT / "bench" / "work").glob("accuracy_*.safetensors"))]}
    for name, path in models.items():
        det = Detector.from_artifact(path, "cpu")
        data = ROOT.parent / "shared" / "datasets" / name
        images = good_images([data]) if data.is_dir() else None
        with tempfile.TemporaryDirectory() as d:
            if images is None:  # not a shared set: generated parts validate it
                images = []
                for i, blob in enumerate(images_of(SIZES["900x900 part"])):
                    images.append(Path(d) / f"{i}.png")
                    images[-1].write_bytes(blob)
            t0 = time.perf_counter()
            export_onnx(det, path, path.with_suffix(".onnx"), validation_sample(images, 16))
            out[name] = time.perf_counter() - t0
        print(f"export {path.name}: {out[name]:.1f} s", flush=True)
    return out


def fit_rows(exports: dict[str, float]) -> list[dict]:
    """Per shared set: our fit (and its phases) beside anomalib PaDiM's at each peer size and PatchCore's,
    from accuracy.json."""
    res = ROOT / "bench" / "results" / "accuracy.json"
    if not res.is_file():
        return []
    rows = json.loads(res.read_text())["rows"]
    out = []
    for ds in sorted({r["dataset"] for r in rows.values()}):
        got = {r["method"]: r for r in rows.values() if r["dataset"] == ds}
        ours = got.get("SAE Inspect (default)", {})
        patchcore = got.get(PATCHCORE, {})  # its 256 px row
        out.append({"dataset": ds, "ours_fit_s": ours.get("fit_seconds"), "profile_s": ours.get("fit_profile_s"),
                    "export_s": exports.get(ds),
                    "padim_fit_s": {str(s): got.get(peer_name("anomalib PaDiM", s), {}).get("fit_seconds")
                                    for s in PEER_SIZES},
                    "patchcore_fit_s": patchcore.get("fit_seconds"), "n_train_images": ours.get("n_train_images")})
    return out


def fit_table(rows: list[dict]) -> list[str]:
    def f(v: float | None, fmt: str = ".0f") -> str:
        return "-" if v is None else format(v, fmt)

    head = "".join(f"PaDiM fit, {s} px | ours (with export) / that | " for s in PEER_SIZES)
    lines = ["Fit time per shared set (seconds, 2 cores; ours from `python -m bench.accuracy`, the export "
             "timed here):", "",
             f"| set | train images | ours: fit | ours: + export | {head}PatchCore fit, 256 px | "
             "where our fit goes |", "|---|---|---|---|" + "---|---|" * len(PEER_SIZES) + "---|---|"]
    for r in rows:
        ours, exp = r["ours_fit_s"], r["export_s"]

        def ratio(peer: float | None, ours: float | None = ours, exp: float | None = exp) -> float | None:
            return None if None in (ours, peer) else (ours + (exp or 0.0)) / peer

        padim = "".join(f"{f(v)} | {f(ratio(v), '.1f')} | " for v in (r["padim_fit_s"].get(str(s)) for s in PEER_SIZES))
        phases = ", ".join(f"{k} {v:.0f}" for k, v in (r["profile_s"] or {}).items()) or "-"
        lines.append(f"| {r['dataset']} | {f(r['n_train_images'])} | {f(ours)} | {f(exp)} | {padim}"
                     f"{f(r['patchcore_fit_s'])} | {phases} |")
    return lines


def shown(path: Path) -> Path:
    """`path` as a command run from the repository root would name it."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if not a.model.is_file():
        raise SystemExit(f"{a.model}: no such model; fit one with `python -m bench.accuracy` or `sae-inspect fit`")
    torch.set_num_threads(torch.get_num_threads())
    det = Detector.from_artifact(a.model, a.device)
    cfg = det.config
    data = {name: images_of(hw) for name, hw in SIZES.items()}
    pictures = {name: [det.decode(b) for b in blobs] for name, blobs in data.items()}
    canvases = {name: np.concatenate([make_canvases(p, cfg.preprocess)[0] for p in pics])
                for name, pics in pictures.items()}

    @torch.inference_mode()
    def bare(name: str, bs: int) -> int:
        x = to_batch(canvases[name][:bs], cfg.backbone.mean, cfg.backbone.std, det.device)
        det.backbone(x)
        return bs

    offline = offline_backbone(det.backbone, cfg.preprocess.size, str(det.device))

    @torch.inference_mode()
    def bare_offline(name: str, bs: int) -> int:
        x = to_batch(canvases[name][:bs], cfg.backbone.mean, cfg.backbone.std, det.device)
        offline.module(x)
        return bs

    stages: dict[str, Callable[[str, int], int]] = {
        "bare": bare,
        "bare_offline": bare_offline,
        "maps": lambda name, bs: len(det.maps(pictures[name][:bs])),
        "inspect": lambda name, bs: len(det.inspect(pictures[name][:bs])),
        "file": lambda name, bs: len(det.inspect([det.decode(b) for b in data[name][:bs]])),
    }
    exports = export_times(a.model)
    onnx_file = a.model.with_suffix(".onnx")
    portable = PortableDetector(onnx_file)
    stages["onnx"] = lambda name, bs: len(portable.inspect(pictures[name][:bs]))
    stages["onnx_file"] = lambda name, bs: len(portable.inspect([portable.decode(b) for b in data[name][:bs]]))
    try:
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(onnx_file)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        stages["openvino"] = lambda name, bs: len(compiled({0: canvases[name][:bs].astype(np.float32)})[0])
    except ImportError:
        print("openvino not installed: no OpenVINO row", flush=True)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(a.model, Path(d) / "line.safetensors")
        shutil.copy(onnx_file, Path(d) / "line.onnx")  # beside it, as a fit leaves it: the default runtime
        server = {"SAE_INSPECT_DEVICE": a.device, "SAE_INSPECT_QUEUE_SIZE": "256"}
        with server_process(Path(d), **server) as (url, _), \
                server_process(Path(d), **server, SAE_INSPECT_CPU_TURNS="false") as (url_overlap, _):
            for r in range(a.rounds):
                for name in SIZES:
                    for bs in (1, 8):
                        for stage, fn in stages.items():
                            samples.setdefault(f"{name}|{bs}|{stage}", []).append(
                                rate(lambda fn=fn, name=name, bs=bs: fn(name, bs), a.seconds))
                        conc = 1 if bs == 1 else 8
                        batch_s = conc / samples[f"{name}|{bs}|onnx"][-1]  # one batch's time in process
                        for key, server_url in (("http", url), ("http_overlap", url_overlap)):
                            if key == "http_overlap" and conc == 1:  # one request at a time: nothing overlaps
                                continue
                            row = http_rate(server_url, data[name], conc, batch_s, a.seconds * 2)
                            samples.setdefault(f"{name}|{bs}|{key}", []).append(row["images_per_s"])
                            if key == "http":
                                samples.setdefault(f"{name}|{bs}|http_client_cores", []).append(row["client_cores"])
                                for k, v in row["server_median"].items():
                                    samples.setdefault(f"{name}|{bs}|http_server_{k}", []).append(v)
                print(f"round {r + 1}/{a.rounds} done", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    breakdown = profile(det, canvases["900x900 part"][:8])
    cores, threads = os.cpu_count() or 1, {}
    for t in sorted({1, max(1, cores // 2), cores}):  # intra-op threads for inference
        torch.set_num_threads(t)
        threads[t] = rate(lambda: stages["inspect"]("900x900 part", 8), a.seconds * 2)
    torch.set_num_threads(cores)
    result = {"machine": machine(), "model": a.model.name, "threads": torch.get_num_threads(),
              "rounds": a.rounds, "seconds": a.seconds, "median_images_per_s": med, "samples": samples,
              "canvas_pass_ms_batch8_900px": breakdown, "inspect_batch8_900px_by_threads": threads,
              "export_seconds": exports, "fit": fit_rows(exports)}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(result, indent=2))
    lines = [f"Machine: {machine()}, {torch.get_num_threads()} intra-op threads; model `{a.model.name}`; median of "
             f"{a.rounds} interleaved rounds of {a.seconds:g} s per cell; command: `python -m bench.cost --model "
             f"{shown(a.model)}`", "",
             "images/s (ratio to the bare PyTorch backbone forward of the same size and batch); http = the "
             "service at concurrency 1 (batch 1 rows) or 8 (batch 8 rows), serving its default runtime (ONNX "
             "Runtime: the export beside the artifact); the load generator shares the same 2 cores", "",
             f"| image | batch | bare forward | bare forward, fit's runtime ({offline.runtime}) | maps | inspect | "
             "decode + inspect | http | ONNX Runtime inspect | OpenVINO maps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in SIZES:
        for bs in (1, 8):
            b = med[f"{name}|{bs}|bare"]
            cells = [f"{med[f'{name}|{bs}|{s}']:.1f} ({med[f'{name}|{bs}|{s}'] / b:.2f})"
                     if f"{name}|{bs}|{s}" in med else "-"
                     for s in ("bare_offline", "maps", "inspect", "file", "http", "onnx", "openvino")]
            lines.append(f"| {name} | {bs} | {b:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "The service (http) against the same runtime in process: `ONNX Runtime decode + inspect` "
              "decodes the PNG and inspects in one process, as the service does per request; http = steady-state "
              "replies per second inside a window of at least ten batches after one batch's warm-up "
              "(`http_rate`); decoding during inference = the same service with `SAE_INSPECT_CPU_TURNS=false` "
              "(uploads decoded while a CPU batch runs, as before service/turns.py; concurrency 8 only: one request "
              "at a time overlaps nothing); server times are the default service's replies' own medians (ms per "
              "request, decode including its wait for the cores; inference = the whole micro-batch's); load "
              "generator = the client process's CPU use in cores, on the same 2 cores as the server", "",
              "| image | concurrency | http | ONNX Runtime decode + inspect | http / that | http / ONNX Runtime "
              "inspect | decoding during inference: http / ONNX Runtime inspect | server decode ms | server queue "
              "ms | server inference ms (batch) | load generator cores |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in SIZES:
        for bs in (1, 8):
            h, f, o = (med[f"{name}|{bs}|{k}"] for k in ("http", "onnx_file", "onnx"))
            overlap = med.get(f"{name}|{bs}|http_overlap")
            sv = {k: med.get(f"{name}|{bs}|http_server_{k}", float("nan"))
                  for k in ("decode_ms", "queue_ms", "inference_ms", "batch_size")}
            lines.append(f"| {name} | {1 if bs == 1 else 8} | {h:.1f} | {f:.1f} | {h / f:.2f} | {h / o:.2f} | "
                         + ("-" if overlap is None else f"{overlap:.1f} ({overlap / o:.2f})") + " | "
                         f"{sv['decode_ms']:.1f} | {sv['queue_ms']:.1f} | {sv['inference_ms']:.0f} "
                         f"({sv['batch_size']:.0f}) | {med[f'{name}|{bs}|http_client_cores']:.2f} |")
    total = sum(breakdown.values())
    lines += ["", "Where `Detector.canvas_pass` spends its time (900 x 900 part, batch 8, torch.profiler, ms per "
              "batch): " + ", ".join(f"{k[:-3]} {v:.1f} ({v / total:.0%})" for k, v in breakdown.items())]
    lines += ["", "Intra-op threads (inspect, 900 x 900, batch 8, images/s): "
              + ", ".join(f"{t} thread{'s' if t > 1 else ''} {v:.1f}" for t, v in threads.items())]
    lines += ["", *fit_table(result["fit"])]
    (out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
