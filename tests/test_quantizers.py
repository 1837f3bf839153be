"""Every quantizer kind trains a toy autoencoder one step; indices reproduce the quantized output."""

import math

import pytest
import torch
from torch import nn

from unitok.errors import ConfigError
from unitok.tokenizers.quantizers import QuantizerConfig, Quantizer, check_dead_code_threshold

KINDS = {
    "vq-ema-kmeans-lowdim": dict(kind="vq", codebook_size=32, codebook_dim=4, kmeans_init=True,
                                 dead_code_threshold=0.5),
    "vq-cosine": dict(kind="vq", codebook_size=32, cosine=True),
    "vq-learned-rotation": dict(kind="vq", codebook_size=32, ema=False, kmeans_init=False, rotation_trick=True),
    "rvq": dict(kind="rvq", codebook_size=32, levels=3, codebook_dim=4, dead_code_threshold=0.5),
    "fsq": dict(kind="fsq", fsq_levels=[5, 4, 3]),
    "lfq": dict(kind="lfq", codebook_size=64),
    "simvq": dict(kind="simvq", codebook_size=32),
}


@pytest.mark.parametrize("name", list(KINDS))
def test_toy_autoencoder_one_step(name):
    torch.manual_seed(0)
    cfg = QuantizerConfig(**KINDS[name])
    enc, dec, q = nn.Linear(12, 16), nn.Linear(16, 12), Quantizer(cfg, 16)
    x = torch.randn(4, 64, 12)  # (B, N, features): 256 tokens per step
    out = q(enc(x))
    loss = (dec(out.quantized) - x).pow(2).mean() + out.loss
    assert torch.isfinite(loss)
    loss.backward()
    g = enc.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, "no gradient reached the encoder"
    levels = cfg.num_levels
    assert out.indices.shape == ((4, 64) if levels == 1 else (4, 64, levels))
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < cfg.size
    assert 0 < out.usage <= 1 and 1 <= out.perplexity <= cfg.size + 1e-3
    if name == "fsq":
        assert float(out.loss) == 0.0  # FSQ has no auxiliary loss
    # eval: indices -> codes reproduces the quantized output
    q.eval()
    with torch.no_grad():
        o2 = q(enc(x))
        codes = q.indices_to_codes(o2.indices)
    torch.testing.assert_close(codes, o2.quantized, atol=1e-5, rtol=1e-4)


def test_ema_codebook_moves_and_kmeans_initialises():
    torch.manual_seed(0)
    q = Quantizer(QuantizerConfig(kind="vq", codebook_size=16, kmeans_init=True, decay=0.5), 8)
    cb = q.vq._codebook
    assert not bool(cb.initted)
    q(torch.randn(2, 100, 8) + 5.0)
    assert bool(cb.initted)
    assert cb.embed.mean().item() > 3.0, "k-means init should place codes near the data (mean 5)"
    # training-mode forwards on data elsewhere (mean -5) pull the codebook there by EMA (decay 0.5)
    before = cb.embed.clone()
    for _ in range(8):
        out = q(torch.randn(2, 100, 8) - 5.0)
    assert not torch.equal(cb.embed, before), "training-mode forwards did not update the EMA codebook"
    hit = out.indices.unique()
    moved = cb.embed[0, hit]  # (codes hit by the last batch, 8)
    assert (moved - before[0, hit]).norm(dim=-1).min() > 5.0, "a code in use stayed where it was"
    assert (moved.mean(-1) < -3.0).all(), f"codes in use not pulled to the data (mean -5): {moved.mean(-1)}"
    # eval-mode forwards never touch the codebook or its EMA statistics
    q.eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    with torch.no_grad():
        for _ in range(3):
            q(torch.randn(2, 100, 8) + 20.0)
    for k, v in q.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed in eval mode"


def test_dead_code_threshold_guard():
    cfg = QuantizerConfig(kind="vq", codebook_size=1024, dead_code_threshold=2.0)
    with pytest.raises(ConfigError, match="dead_code_threshold"):
        check_dead_code_threshold(cfg, tokens_per_step=1024)  # mean hits/code = 1
    check_dead_code_threshold(QuantizerConfig(codebook_size=1024, dead_code_threshold=0.05), 1024)


def test_bad_configs():
    with pytest.raises(ValueError, match="power-of-two"):
        QuantizerConfig(kind="lfq", codebook_size=100)
    with pytest.raises(ValueError, match="levels"):
        QuantizerConfig(kind="vq", levels=2)
    assert QuantizerConfig(kind="fsq", fsq_levels=[8, 5, 5, 5]).size == 1000
    assert math.log2(QuantizerConfig(kind="lfq", codebook_size=256).size) == 8
