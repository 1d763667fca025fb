import numpy as np
import torch

from models.explain import GRID
from models.sae import TopKSAE
from training.atlas import latent_statistics


def test_latent_statistics_equal_their_dense_definition():
    """Counts, mean/max activation, firing map and each latent's strongest patches, from the k active entries
    only, equal the same statistics read off the dense (N, n) code matrix."""
    g = torch.Generator().manual_seed(0)
    n, k, N, m = 40, 5, 600, 2
    indices = torch.rand(N, n, generator=g).argsort(1)[:, :k]
    values = torch.relu(torch.randn(N, k, generator=g))  # some entries 0: chosen by TopK but not firing
    cells = np.random.default_rng(0).integers(0, GRID, (N, 2))
    atlas, top_v, top_i = latent_statistics(values, indices, n, cells, m)

    z = TopKSAE.densify(values, indices, n)  # (N, n)
    fired = z > 0
    count = fired.sum(0).float()
    torch.testing.assert_close(atlas.freq, count / N)
    torch.testing.assert_close(atlas.mean_act, z.sum(0) / count.clamp_min(1))
    torch.testing.assert_close(atlas.max_act, z.max(0).values)
    flat = torch.from_numpy(cells[:, 0] * GRID + cells[:, 1])
    per_cell = torch.zeros(GRID * GRID, n).index_add_(0, flat, fired.float())
    cell_count = torch.bincount(flat, minlength=GRID * GRID).float().clamp_min(1)
    torch.testing.assert_close(atlas.loc_freq, (per_cell / cell_count[:, None]).t().reshape(n, GRID, GRID))
    best_v, best_i = z.topk(m, dim=0)
    live = best_v > 0
    assert live.sum() > n  # most latents fired on at least two patches: the comparison is not vacuous
    torch.testing.assert_close(top_v[live], best_v[live])
    assert torch.equal(top_i[live], best_i[live])
    assert (top_v[~live] <= 0).all()
