"""The options measured before choosing the lean scoring path, in one process.

    python -m bench.runtime_options --model bench/work/accuracy_magnetic_tile.safetensors

1. Map: bilinear upsampling + 2-D Gaussian at canvas resolution (the definition) against the
   folded map operator, per batch of 8.
2. SAE: dense codes (encode with scatter, dense decode) against the k active latents only
   (top-k encode, k-atom decode), per batch of 8 canvases (8192 patches).
3. Encoder precision: float32, bfloat16, int8 dynamic quantisation: time and how often the
   top-k set of latents stays the same.
4. Threads: Detector.inspect of one 256 px part from the main thread and from a worker thread
   (as the service runs it), with 1 and 2 intra-op threads.
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

from bench.cost import images_of
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=ROOT / "bench" / "work" / "accuracy_magnetic_tile.safetensors")
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
    (out / "runtime_options.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
