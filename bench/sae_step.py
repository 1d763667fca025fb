"""Cost of one SAE training step: the dense definition against the sparse path the fit uses.

    python -m bench.sae_step

At the default shape (152 features x 8 = 1216 latents, k 16, AuxK 64, batch 2048), for 0 % and
20 % dead latents: milliseconds per step (forward, loss, backward), interleaved in rounds, and
the largest gradient difference between the two paths. The dense definition computes all
latents with a graph, decodes the dense codes and masks the live latents out of a full TopK
for AuxK; ``TopKSAE.forward_sparse`` picks the latents without a graph and runs every product of the
backward on the chosen (patch, latent) entries only (CSR products: ``CodePattern``), and AuxK runs on
the dead latents' columns only (models/sae.py).
Writes bench/results/sae_step.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.fit_eval import machine
from models.config import SAEConfig
from models.sae import TopKSAE, fvu, training_losses

ROOT = Path(__file__).resolve().parents[1]


def dense_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    out = sae(x)
    aux = x.new_zeros(())
    if dead.any():
        masked = out.pre_acts.masked_fill(~dead, float("-inf"))
        values, indices = masked.topk(min(cfg.aux_k, int(dead.sum())), dim=-1)
        z = torch.zeros_like(out.pre_acts).scatter_(-1, indices, torch.relu(values))
        aux = fvu(z @ sae.W_dec.t(), (x - out.x_hat).detach())
    return fvu(out.x_hat, x) + cfg.aux_coef * aux


def sparse_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    _, main, aux = training_losses(sae, x, x, dead.nonzero().squeeze(1), cfg.aux_k)
    return main + cfg.aux_coef * aux


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg, d, batch, rounds, steps = SAEConfig(), 152, 2048, 5, 10
    x = torch.randn(batch, d) * torch.rand(d)
    rows = []
    for dead_share in (0.0, 0.2):
        sae = {name: TopKSAE(d, cfg.expansion * d, cfg.k, seed=1) for name in ("dense", "sparse")}
        with torch.no_grad():
            sae["dense"].b_enc.normal_(0, 0.1)
        sae["sparse"].load_state_dict(sae["dense"].state_dict())
        dead = torch.rand(cfg.expansion * d) < dead_share
        fns = {"dense": dense_loss, "sparse": sparse_loss}
        for name, fn in fns.items():
            fn(sae[name], x, dead, cfg).backward()
        diff = max(float((a.grad - b.grad).abs().max()) for a, b in
                   zip(sae["dense"].parameters(), sae["sparse"].parameters(), strict=True))
        scale = max(float(a.grad.abs().max()) for a in sae["dense"].parameters())
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    sae[name].zero_grad(set_to_none=True)
                    fn(sae[name], x, dead, cfg).backward()
                times[name].append((time.perf_counter() - t0) / steps * 1e3)
        med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        rows.append({"dead_share": dead_share, "dense_ms": med["dense"], "sparse_ms": med["sparse"],
                     "speedup": med["dense"] / med["sparse"], "max_grad_difference": diff, "max_grad": scale})
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sae_step.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [f"Machine: {machine()}; batch {batch}, {d} features, {cfg.expansion * d} latents, k {cfg.k}, "
             f"AuxK {cfg.aux_k}; median of {rounds} interleaved rounds of {steps} steps; command: "
             "`python -m bench.sae_step`", "",
             "| dead latents | dense step (definition) ms | sparse step (the fit's) ms | speed-up | "
             "max gradient difference (largest gradient) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dead_share']:.0%} | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | {r['speedup']:.2f} x | "
                     f"{r['max_grad_difference']:.1e} ({r['max_grad']:.1e}) |")
    (out / "sae_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
