import torch

from models.sae import TopKSAE, auxk_loss, fvu, patch_error


def test_init_unit_norm_decoder_and_tied_encoder():
    sae = TopKSAE(8, 32, 4)
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(32))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())


def test_topk_activates_at_most_k_latents():
    sae = TopKSAE(8, 32, 4)
    out = sae(torch.randn(100, 8))
    l0 = (out.latents > 0).sum(1)
    assert int(l0.max()) <= 4 and out.x_hat.shape == (100, 8)


def test_fvu_known_values():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(fvu(x, x)) == 0.0
    assert float(fvu(torch.zeros_like(x), x)) == 1.0  # predicting the mean explains nothing


def test_auxk_is_zero_without_dead_latents_and_positive_with():
    pre = torch.randn(10, 6)
    w = torch.randn(4, 6)
    resid = torch.randn(10, 4)
    none = torch.zeros(0, dtype=torch.long)
    assert float(auxk_loss(pre[:, none], w[:, none], resid, 2)) == 0.0
    assert float(auxk_loss(pre, w, resid, 2)) > 0.0


def test_sparse_training_forward_has_the_dense_loss_and_gradients():
    """forward_sparse + auxk on the dead latents only = the dense TopK forward and AuxK, value and gradient."""
    from bench.sae_step import dense_loss, sparse_loss
    from models.config import SAEConfig

    cfg = SAEConfig(k=4, aux_k=8)
    g = torch.Generator().manual_seed(0)
    dense, sparse = TopKSAE(16, 64, 4, seed=1), TopKSAE(16, 64, 4, seed=1)
    with torch.no_grad():
        dense.b_pre.normal_(generator=g)
        dense.b_enc.normal_(0, 0.1, generator=g)
        dense.W_enc.add_(0.1 * torch.randn(64, 16, generator=g))
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(300, 16, generator=g)
    dead = torch.rand(64, generator=g) < 0.3
    dense_loss(dense, x, dead, cfg).backward()
    sparse_loss(sparse, x, dead, cfg).backward()
    torch.testing.assert_close(sparse.forward_sparse(x).x_hat, dense(x).x_hat, atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(dense.named_parameters(), sparse.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_training_reduces_fvu_and_keeps_atoms_unit_norm():
    from models.config import ModelConfig, SAEConfig
    from training.fit import FitConfig, train_sae

    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(12, 16, generator=g)
    codes = torch.rand(4000, 12, generator=g) * (torch.rand(4000, 12, generator=g) < 0.2)
    x = codes @ atoms  # sparse combinations of 12 directions
    sae, stats = train_sae(x, ModelConfig(sae=SAEConfig(expansion=2, k=4)), FitConfig(steps=300, batch_size=512),
                           progress=False)
    assert stats["fvu"] < 0.2
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(32), atol=1e-5, rtol=0)
    assert patch_error(x[:5], sae(x[:5]).x_hat).shape == (5,)


def test_topk_inference_path_equals_the_dense_one():
    """encode_topk + decode_topk (k atoms per patch) give the dense codes and reconstruction."""
    sae = TopKSAE(24, 96, 5, seed=3)
    x = torch.randn(200, 24, generator=torch.Generator().manual_seed(0))
    z, _ = sae.encode(x)
    values, indices = sae.encode_topk(x)
    assert torch.equal(TopKSAE.densify(values, indices, sae.n_latents), z)
    torch.testing.assert_close(sae.decode_topk(values, indices), sae.decode(z), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode_topk(values, indices, portable=True), sae.decode(z), atol=1e-5, rtol=1e-5)


def test_encoding_in_blocks_of_rows_gives_every_patch_the_same_code():
    """encode_topk(x, rows) ranks the pre-activations block by block (cache-sized) and finds the latents of one
    product, their values equal within float rounding (a block's product may take another kernel): blocks that do
    not divide the patches, one block larger than all of them, and a block of one row."""
    sae = TopKSAE(24, 96, 5, seed=3)
    x = torch.randn(203, 24, generator=torch.Generator().manual_seed(1))
    whole = sae.encode_topk(x)
    for rows in (1, 50, 64, 500):
        values, indices = sae.encode_topk(x, rows)
        assert values.shape == indices.shape == (203, 5)
        assert torch.equal(indices, whole[1])
        torch.testing.assert_close(values, whole[0], atol=1e-6, rtol=1e-6)
