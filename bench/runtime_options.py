"""The options measured before choosing the lean scoring path, in one process.

    python -m bench.runtime_options --model bench/work/variant_magnetic_tile_size512.safetensors

1. Map: bilinear upsampling + 2-D Gaussian at canvas resolution (the definition) against the
   folded map operator, per batch of 8.
2. SAE: dense codes (encode with scatter, dense decode) against the k active latents only
   (top-k encode, k-atom decode), per batch of 8 canvases (8192 patches).
3. Encoder precision: float32, bfloat16, int8 dynamic quantisation: time and how often the
   top-k set of latents stays the same.
4. Threads: Detector.inspect of one 256 px part from the main thread and from a worker thread
   (as the service runs it), with 1 and 2 intra-op threads.
5. The PyTorch backbone forward (batch 8, 256 px canvases), eager against channels-last memory,
   TorchScript frozen + ``optimize_for_inference`` (oneDNN fusion), and ``torch.compile``
   (inductor; skipped with the reason when it cannot build here), each checked for the same
   features (max abs difference), and the whole ScoringNet in eager PyTorch against ONNX Runtime.
Writes bench/results/runtime_options.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.cost import DEFAULT_MODEL, images_of
from bench.fit_eval import machine
from models.detector import Detector
from models.preprocess import make_canvases
from models.scoring import anomaly_maps, reference_maps

ROOT = Path(__file__).resolve().parents[1]


def ms(fn: Callable[[], object], n: int = 10) -> float:
    with torch.inference_mode():
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
    return (time.perf_counter() - t0) / n * 1e3


def backbone_options(det: Detector, canvases: np.ndarray, onnx_file: Path) -> dict:
    """Backbone forward at batch 8 under each PyTorch CPU option, and the scoring net in ONNX Runtime."""
    from models.features import to_batch

    r: dict = {}
    x = to_batch(canvases[:8], det.config.backbone.mean, det.config.backbone.std)
    body = det.backbone
    with torch.inference_mode():
        ref = body(x)
    r["backbone_eager_ms"] = ms(lambda: body(x))

    def check(name: str, fn: Callable[[], list[torch.Tensor]]) -> None:
        try:
            with torch.inference_mode():
                got = fn()
            r[f"backbone_{name}_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
            r[f"backbone_{name}_ms"] = ms(fn)
        except Exception as e:  # noqa: BLE001 - an option that cannot run here is reported, not fatal
            r[f"backbone_{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"

    xl = x.contiguous(memory_format=torch.channels_last)
    cl = __import__("copy").deepcopy(body).to(memory_format=torch.channels_last)
    check("channels_last", lambda: cl(xl))

    def frozen() -> Callable[[], list[torch.Tensor]]:
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(body._forward, x.clone(), check_trace=False, strict=False)
            opt = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return lambda: list(opt(x))

    try:
        run_frozen = frozen()
        check("jit_freeze_onednn", run_frozen)
    except Exception as e:  # noqa: BLE001
        r["backbone_jit_freeze_onednn_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    try:
        compiled = torch.compile(body)
        check("torch_compile", lambda: compiled(x))
    except Exception as e:  # noqa: BLE001
        r["backbone_torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    if onnx_file.is_file():
        from models.portable import PortableDetector

        portable = PortableDetector(onnx_file)
        r["pytorch_scoring_ms"] = ms(lambda: det.canvas_maps(canvases[:8]), 5)
        r["onnxruntime_scoring_ms"] = ms(lambda: portable.canvas_maps(canvases[:8]), 5)
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    a = p.parse_args()
    det = Detector.from_artifact(a.model, "cpu")
    pics = [det.decode(b) for b in images_of((900, 900))]
    canvases = np.concatenate([make_canvases(x, det.config.preprocess)[0] for x in pics])
    sae, r = det.sae, {}
    with torch.inference_mode():
        f = det.features(canvases).flatten(0, 2)  # (8192, C) real patch features
        err = torch.rand(8, 32, 32) * 5
    size, sigma = det.config.preprocess.size, det.config.scoring.sigma
    r["map_definition_ms"] = ms(lambda: reference_maps(err, size, sigma))
    r["map_operator_ms"] = ms(lambda: anomaly_maps(err, size, sigma))
    r["sae_dense_ms"] = ms(lambda: sae.decode(sae.encode(f)[0]))
    r["sae_topk_ms"] = ms(lambda: sae.decode_topk(*sae.encode_topk(f)))
    r["encoder_fp32_ms"] = ms(lambda: sae.pre_activations(f))
    with torch.inference_mode():
        ref = sae.pre_activations(f).topk(sae.k, dim=-1).indices.sort(-1).values
        xb, wb, bb = (f - sae.b_pre).bfloat16(), sae.W_enc.bfloat16(), sae.b_enc.bfloat16()
        r["encoder_bf16_ms"] = ms(lambda: F.linear(xb, wb, bb), 3)
        same_bf16 = (F.linear(xb, wb, bb).float().topk(sae.k, dim=-1).indices.sort(-1).values == ref).all(-1)
        lin = torch.nn.Linear(sae.d_in, sae.n_latents)
        lin.weight.copy_(sae.W_enc)
        lin.bias.copy_(sae.b_enc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, torch.qint8)
        xc = f - sae.b_pre
        r["encoder_int8_ms"] = ms(lambda: q(xc))
        same_int8 = (q(xc).topk(sae.k, dim=-1).indices.sort(-1).values == ref).all(-1)
    r["topk_set_unchanged_bf16"] = float(same_bf16.float().mean())
    r["topk_set_unchanged_int8"] = float(same_int8.float().mean())
    part = [det.decode(images_of((256, 256))[0])]

    def inspect_ms(threads: int) -> float:
        torch.set_num_threads(threads)
        return ms(lambda: det.inspect(part), 20)

    cores = torch.get_num_threads()
    for t in (1, cores):
        r[f"inspect_main_thread_{t}_threads_ms"] = inspect_ms(t)
        with ThreadPoolExecutor(1) as pool:
            r[f"inspect_worker_thread_{t}_threads_ms"] = pool.submit(inspect_ms, t).result()
    torch.set_num_threads(cores)
    r.update(backbone_options(det, canvases, a.model.with_suffix(".onnx")))
    out = ROOT / "bench" / "results"
    (out / "runtime_options.json").write_text(json.dumps({"machine": machine(), **r}, indent=2))
    md = [f"Machine: {machine()}; command: `python -m bench.runtime_options --model {a.model}`", "",
          "| option | measured |", "|---|---|",
          f"| map, batch of 8: upsampling + 2-D Gaussian (definition) / folded operator | "
          f"{r['map_definition_ms']:.1f} ms / {r['map_operator_ms']:.2f} ms |",
          f"| SAE on 8192 patches: dense codes / k active latents | {r['sae_dense_ms']:.1f} ms / "
          f"{r['sae_topk_ms']:.1f} ms |",
          f"| encoder product: float32 / bfloat16 / int8 dynamic | {r['encoder_fp32_ms']:.1f} / "
          f"{r['encoder_bf16_ms']:.1f} / {r['encoder_int8_ms']:.1f} ms |",
          f"| patches whose top-{sae.k} latents stay the same: bfloat16 / int8 | "
          f"{r['topk_set_unchanged_bf16']:.1%} / {r['topk_set_unchanged_int8']:.1%} |"]
    for t in (1, cores):
        main_ms, worker_ms = r[f"inspect_main_thread_{t}_threads_ms"], r[f"inspect_worker_thread_{t}_threads_ms"]
        md.append(f"| inspect one 256 px part, {t} intra-op thread(s): main thread / worker thread | "
                  f"{main_ms:.1f} ms / {worker_ms:.1f} ms |")
    md.append(f"| backbone forward, batch 8 at 256 px: eager | {r['backbone_eager_ms']:.1f} ms |")
    for k in ("channels_last", "jit_freeze_onednn", "torch_compile"):
        if f"backbone_{k}_ms" in r:
            md.append(f"| backbone forward, batch 8: {k.replace('_', ' ')} (max abs feature difference) | "
                      f"{r[f'backbone_{k}_ms']:.1f} ms ({r[f'backbone_{k}_max_abs_diff']:.1e}) |")
        else:
            md.append(f"| backbone forward, batch 8: {k.replace('_', ' ')} | not available: "
                      f"{r.get(f'backbone_{k}_error', '?')} |")
    if "onnxruntime_scoring_ms" in r:
        md.append(f"| whole scoring net, batch 8: eager PyTorch / ONNX Runtime (the default on CPU) | "
                  f"{r['pytorch_scoring_ms']:.1f} ms / {r['onnxruntime_scoring_ms']:.1f} ms |")
    (out / "runtime_options.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
