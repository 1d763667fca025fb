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
    assert float(auxk_loss(pre, torch.zeros(6, dtype=torch.bool), w, resid, 2)) == 0.0
    assert float(auxk_loss(pre, torch.ones(6, dtype=torch.bool), w, resid, 2)) > 0.0


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
