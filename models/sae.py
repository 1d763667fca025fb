"""TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    z     = TopK(ReLU(W_enc (x - b_pre) + b_enc))      # (N, n), k non-zeros per row
    x_hat = W_dec z + b_pre                            # W_dec columns have unit norm

The encoder starts as the decoder's transpose, ``b_pre`` at the data's geometric
median (set by the trainer), and the AuxK loss models the residual with the top
``aux_k`` dead latents so that they come back to life. Losses are pure functions.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (N, d)
    latents: torch.Tensor  # (N, n) sparse: k non-zeros per row
    pre_acts: torch.Tensor  # (N, n) before TopK, for AuxK


class SparseOutput(NamedTuple):
    x_hat: torch.Tensor  # (N, d)
    values: torch.Tensor  # (N, k) the active latents, ReLU'd
    indices: torch.Tensor  # (N, k) which latents they are


# The training step's sparse products run on CSR matrices (torch marks CSR support "beta" once per process).
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class CodePattern(NamedTuple):
    """Where the k active latents of N patches sit in the (N, n) code matrix, as CSR, and its transpose:
    the sparse products of a training step read it instead of materialising (N, k, d) gathers."""

    crow: torch.Tensor  # (N + 1,) row pointers of the (N, n) pattern: k per row
    col: torch.Tensor  # (N * k,) latent of each entry, ascending within a row
    t_crow: torch.Tensor  # (n + 1,) row pointers of the transposed (n, N) pattern
    t_col: torch.Tensor  # (N * k,) patch of each transposed entry, ascending within a latent
    t_perm: torch.Tensor  # (N * k,) entry order of the transpose: entries[t_perm] lists them latent by latent
    shape: tuple[int, int]  # (N, n)

    @classmethod
    def of(cls, indices: torch.Tensor, n_latents: int) -> CodePattern:
        """`indices` (N, k), ascending and distinct in each row."""
        n, k = indices.shape
        col = indices.flatten()
        crow = torch.arange(0, n * k + 1, k, device=col.device)
        t_perm = torch.argsort(col, stable=True)
        t_crow = torch.zeros(n_latents + 1, dtype=torch.long, device=col.device)
        torch.cumsum(torch.bincount(col, minlength=n_latents), 0, out=t_crow[1:])
        return cls(crow, col, t_crow, t_perm // k, t_perm, (n, n_latents))

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """(N, k) entries -> the (N, n) CSR matrix holding them."""
        return torch.sparse_csr_tensor(self.crow, self.col, values.flatten(), self.shape, check_invariants=False)

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """(N, k) entries -> the (n, N) CSR transpose of `matrix(values)`."""
        return torch.sparse_csr_tensor(self.t_crow, self.t_col, values.flatten()[self.t_perm], self.shape[::-1],
                                       check_invariants=False)


class _EncodeSelected(torch.autograd.Function):
    """Pre-activations of the selected latents, (N, k), whose values the caller computed already (the dense
    product that chose them). Backward: gradients for the centred input, W_enc and b_enc through sparse
    products that touch only the selected entries."""

    @staticmethod
    def forward(ctx, xc: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, selected: torch.Tensor,
                pattern: CodePattern) -> torch.Tensor:
        ctx.save_for_backward(xc, w_enc)
        ctx.pattern = pattern
        return selected.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xc, w_enc = ctx.saved_tensors
        p: CodePattern = ctx.pattern
        g_xc = p.matrix(grad) @ w_enc if ctx.needs_input_grad[0] else None  # (N, d)
        g_w = p.transposed(grad) @ xc if ctx.needs_input_grad[1] else None  # (n, d)
        g_b = grad.new_zeros(p.shape[1]).index_add_(0, p.col, grad.flatten()) if ctx.needs_input_grad[2] else None
        return g_xc, g_w, g_b, None, None


class _DecodeSelected(torch.autograd.Function):
    """(N, k) values of the selected latents -> (N, d) sum of their atoms; backward through a sampled
    product (the gradient of each selected value only) and the transposed pattern (W_dec's gradient)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, w_dec: torch.Tensor, pattern: CodePattern) -> torch.Tensor:
        ctx.save_for_backward(values, w_dec)
        ctx.pattern = pattern
        return pattern.matrix(values) @ w_dec.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, w_dec = ctx.saved_tensors
        p: CodePattern = ctx.pattern
        g_values = g_w = None
        if ctx.needs_input_grad[0]:
            sampled = torch.sparse.sampled_addmm(p.matrix(torch.zeros_like(values)), grad, w_dec, beta=0.0)
            g_values = sampled.values().view_as(values)
        if ctx.needs_input_grad[1]:
            g_w = (p.transposed(values) @ grad).t()  # (d, n)
        return g_values, g_w, None


class TopKSAE(nn.Module):
    def __init__(self, d_in: int, n_latents: int, k: int, seed: int = 0):
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in 1..{n_latents}, got {k}")
        self.d_in, self.n_latents, self.k = d_in, n_latents, k
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(d_in, n_latents, generator=g)
        w_dec = w_dec / w_dec.norm(dim=0, keepdim=True)
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        self.W_enc = nn.Parameter(w_dec.t().clone())  # (n, d)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(w_dec)  # (d, n)

    def pre_activations(self, x: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) -> (N, n), or (N, len(latents)) for the given latent indices only."""
        if latents is None:
            return F.linear(x - self.b_pre, self.W_enc, self.b_enc)
        return F.linear(x - self.b_pre, self.W_enc[latents], self.b_enc[latents])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) -> sparse latents (N, n) and pre-activations (N, n)."""
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))
        return z, pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, n) -> (N, d)"""
        return F.linear(z, self.W_dec, self.b_pre)

    def encode_topk(self, x: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) -> the k active latents only: values (N, k) (ReLU'd) and indices (N, k). Inference path.
        `rows`: encode at most that many patches per product, so that each (rows, n) block of pre-activations
        is ranked while it is still in cache rather than written out whole (a 640 px batch of 16 holds
        102,400 patches: 1 GB of pre-activations); each patch's code is computed alone either way (values equal
        within float rounding: a block's product may take another kernel). None: one product (what the ONNX
        export traces, whatever the batch)."""
        if rows is None or len(x) <= rows:
            values, indices = self.pre_activations(x).topk(self.k, dim=-1)
        else:
            parts = [self.pre_activations(x[i : i + rows]).topk(self.k, dim=-1) for i in range(0, len(x), rows)]
            values, indices = torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
        return F.relu(values), indices

    def decode_topk(self, values: torch.Tensor, indices: torch.Tensor, portable: bool = False) -> torch.Tensor:
        """(N, k) values and indices -> (N, d): a weighted sum of k decoder atoms, not a dense product.
        `portable`: the same sum as a gather and a batched product, which ONNX expresses without a loop."""
        if portable:
            atoms = self.W_dec.t()[indices]  # (N, k, d)
            return (values.unsqueeze(1) @ atoms).squeeze(1) + self.b_pre
        # The atoms as rows of a contiguous matrix: on a transposed view embedding_bag takes a strided path
        # 3-8 x slower (a 640 px batch of 16 canvases: 0.58 s against 0.07-0.18 s on 2 cores, timed ad hoc); sums equal
        # within float rounding.
        atoms = self.W_dec.t().contiguous()
        return F.embedding_bag(indices, atoms, per_sample_weights=values, mode="sum") + self.b_pre

    @staticmethod
    def densify(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
        """(..., k) values and indices -> (..., n) dense codes."""
        return values.new_zeros(*values.shape[:-1], n_latents).scatter_(-1, indices, values)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        z, pre = self.encode(x)
        return SAEOutput(self.decode(z), z, pre)

    def forward_sparse(self, x: torch.Tensor) -> SparseOutput:
        """The training forward, with the gradients of `forward` at a fraction of its cost: the latents are
        chosen from pre-activations computed without a graph, and every product of the backward touches the
        chosen (patch, latent) entries only (a TopK's gradient reaches no other latent): sparse CSR
        products, never an (N, n) dense gradient or an (N, k, d) gather."""
        xc = x - self.b_pre
        with torch.no_grad():
            selected, indices = F.linear(xc, self.W_enc, self.b_enc).topk(self.k, dim=-1)  # sorted: faster here
            indices, order = indices.sort(dim=-1)  # CSR wants ascending latents in each row
            selected = selected.gather(-1, order)
        pattern = CodePattern.of(indices, self.n_latents)
        values = F.relu(_EncodeSelected.apply(xc, self.W_enc, self.b_enc, selected, pattern))
        return SparseOutput(_DecodeSelected.apply(values, self.W_dec, pattern) + self.b_pre, values, indices)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=0, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component that would change the atoms' norms."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec.data).sum(0, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec.data


def fvu(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: ||x - x_hat||^2 / ||x - mean(x)||^2 over a batch (N, d)."""
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(dead_pre_acts: torch.Tensor, dead_w_dec: torch.Tensor, residual: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """FVU of the residual (N, d) modelled by the top `aux_k` dead latents, given the dead latents'
    pre-activations (N, n_dead) and atoms (d, n_dead); 0 if none are dead."""
    n_dead = dead_pre_acts.shape[1]
    if n_dead == 0:
        return residual.new_zeros(())
    values, indices = dead_pre_acts.topk(min(aux_k, n_dead), dim=-1, sorted=False)
    z = torch.zeros_like(dead_pre_acts).scatter_(-1, indices, F.relu(values))
    return fvu(F.linear(z, dead_w_dec), residual).nan_to_num(0.0)


def training_losses(sae: TopKSAE, x: torch.Tensor, target: torch.Tensor, dead: torch.Tensor,
                    aux_k: int) -> tuple[SparseOutput, torch.Tensor, torch.Tensor]:
    """One training step's forward: (sparse output, FVU of `target`, AuxK loss of the `dead` latent indices)."""
    out = sae.forward_sparse(x)
    aux = auxk_loss(sae.pre_activations(x, dead), sae.W_dec[:, dead], (target - out.x_hat).detach(), aux_k)
    return out, fvu(out.x_hat, target), aux


def patch_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error per patch: (..., d) -> (...)."""
    return (x - x_hat).pow(2).mean(-1)
