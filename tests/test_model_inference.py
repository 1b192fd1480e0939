"""Posterior-mean inference to numpy and in-silico silencing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrlfads.config import ModelConfig, RegionConfig
from mrlfads.inference import posterior_means, silence_effect
from mrlfads.model import MRLFADS

B, T, TAU = 3, 12, 4


def chain_model(obs="poisson"):
    """Three regions whose only live pathway is A -> B (all other message maps zero)."""
    torch.manual_seed(0)
    regions = tuple(RegionConfig(n, 3) for n in ("A", "B", "C"))
    cfg = ModelConfig(regions=regions, obs_model=obs, ic_enc_seq_len=TAU, ic_enc_dim=4,
                      ci_enc_dim=4, con_dim=5, co_dim=2, ic_dim=3, com_dim=2)
    model = MRLFADS(cfg)
    with torch.no_grad():
        for p, pair in enumerate(cfg.pairs):
            if pair != (0, 1):
                model.msg_w[p] = 0.0
                model.msg_b[p, :, : cfg.com_dim] = 0.0
            else:
                model.msg_b[p, :, : cfg.com_dim] = 1.0  # a strong A -> B signal
    g = torch.Generator().manual_seed(1)
    x = [torch.poisson(torch.full((B, T, 3), 2.0), generator=g).numpy() for _ in regions]
    return model, x


def test_posterior_means_are_numpy_with_named_keys():
    model, x = chain_model()
    model.train()
    res = posterior_means(model, x, batch_size=2)  # two chunks: 2 + 1 trials
    assert model.training  # mode restored
    assert res["rates/A"].shape == (B, T - TAU, 3) and res["rates/A"].dtype == np.float32
    assert res["factors/B"].shape == (B, T - TAU, 3)
    assert res["inputs/C"].shape == (B, T - TAU, 2)
    assert res["messages/A->B"].shape == (B, T - TAU, 2)
    assert set(k for k in res if k.startswith("messages/")) == {
        "messages/A->B", "messages/A->C", "messages/B->A", "messages/B->C", "messages/C->A",
        "messages/C->B"}
    assert np.all(res["rates/A"] > 0)  # Poisson rates are exp(log-rate)
    assert np.all(res["messages/B->A"] == 0.0)
    out = model.eval()([torch.as_tensor(v) for v in x], sample=False)
    np.testing.assert_allclose(res["messages/A->B"], out.message_mean("A", "B").detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    again = posterior_means(model, x)
    np.testing.assert_allclose(again["rates/B"], res["rates/B"], rtol=1e-5)  # means: no noise


def test_silencing_changes_only_downstream():
    model, x = chain_model()
    effect = silence_effect(model, x, None, "A", (TAU + 2, T))
    assert effect["B"] > 0.0
    assert effect["A"] == 0.0 and effect["C"] == 0.0
    # C sends no live message: silencing it changes nothing
    assert silence_effect(model, x, None, "C", (0, T)) == {"A": 0.0, "B": 0.0, "C": 0.0}


def test_silencing_is_causal_in_time():
    model, x = chain_model("gaussian")
    model.eval()
    xt = [torch.as_tensor(v) for v in x]
    with torch.no_grad():
        base = model(xt, sample=False).rates[1]
        cut = model(xt, sample=False, silence={"A": (TAU + 3, TAU + 5)}).rates[1]
    # messages at step t feed g_t; bins before the window are untouched, the first one moves
    assert torch.equal(base[:, :3], cut[:, :3])
    assert not torch.allclose(base[:, 3], cut[:, 3])


def test_silence_arguments_are_checked():
    model, x = chain_model()
    with pytest.raises(ValueError, match="'Z'"):
        silence_effect(model, x, None, "Z", (0, T))
    with pytest.raises(ValueError, match="start < stop"):
        silence_effect(model, x, None, "A", (5, 5))
