"""Every quantizer kind trains a toy autoencoder one step; indices reproduce the quantized output."""

import math

import pytest
import torch
from torch import nn

from unitok.errors import ConfigError
from unitok.tokenizers.quantizers import (QuantizerConfig, Quantizer, build_quantizer, check_dead_code_threshold,
                                          code_stats)

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


# ------------------------------------------------------------------ found by mutation testing (docs/mutation.md)
def test_documented_defaults():
    # recipes that omit a key get these (the module docstring and docs/image.md describe them)
    cfg = QuantizerConfig()
    assert (cfg.kind, cfg.codebook_size, cfg.codebook_dim, cfg.levels, cfg.fsq_levels) == ("vq", 1024, None, 1,
                                                                                          [8, 5, 5, 5])
    assert (cfg.ema, cfg.decay, cfg.kmeans_init, cfg.cosine, cfg.dead_code_threshold) == (True, 0.99, True, False, 0.0)
    assert (cfg.commitment_weight, cfg.rotation_trick, cfg.entropy_weight) == (0.25, False, 0.1)
    assert QuantizerConfig(kind="fsq").size == 1000 and QuantizerConfig().size == 1024


def test_config_limits():
    QuantizerConfig(codebook_size=2)
    with pytest.raises(ValueError, match="at least 2"):
        QuantizerConfig(codebook_size=1)
    assert QuantizerConfig(kind="rvq", levels=1).num_levels == 1 and QuantizerConfig(kind="rvq", levels=3).num_levels == 3
    with pytest.raises(ValueError, match="rvq needs levels >= 1"):
        QuantizerConfig(kind="rvq", levels=0)
    with pytest.raises(ValueError, match="only for kind 'rvq'"):
        QuantizerConfig(kind="fsq", levels=0)


def test_dead_code_guard_boundary_and_kinds():
    cfg = QuantizerConfig(codebook_size=1024, dead_code_threshold=2.0)
    check_dead_code_threshold(cfg, tokens_per_step=4096)  # mean 4 hits per code: 2.0 is exactly half, allowed
    with pytest.raises(ConfigError, match=r"4096 tokens / 1024 codes = 4.00\); use at most 1.00"):
        check_dead_code_threshold(QuantizerConfig(codebook_size=1024, dead_code_threshold=2.01), 4096, "cfg")
    with pytest.raises(ConfigError, match="dead_code_threshold"):
        check_dead_code_threshold(QuantizerConfig(kind="rvq", levels=2, codebook_size=1024, dead_code_threshold=3.0),
                                  4096)
    with pytest.raises(ConfigError, match="dead_code_threshold 0.6"):  # thresholds below 1 are checked too
        check_dead_code_threshold(QuantizerConfig(codebook_size=1024, dead_code_threshold=0.6), 1024)
    # kinds without dead-code expiry, and expiry off, are never an error
    check_dead_code_threshold(QuantizerConfig(kind="fsq", dead_code_threshold=5.0), 1)
    check_dead_code_threshold(QuantizerConfig(kind="lfq", codebook_size=64, dead_code_threshold=5.0), 1)
    check_dead_code_threshold(QuantizerConfig(codebook_size=1024, dead_code_threshold=0.0), 1)


def test_code_stats_usage_and_perplexity():
    usage, ppl = code_stats(torch.tensor([[0, 0, 1, 1]]), 8)
    assert usage == pytest.approx(2 / 8) and ppl == pytest.approx(2.0)
    usage, ppl = code_stats(torch.tensor([0, 1, 2, 3]), 4)
    assert usage == pytest.approx(1.0) and ppl == pytest.approx(4.0)
    usage, ppl = code_stats(torch.tensor([3, 3, 3, 3]), 4)
    assert usage == pytest.approx(0.25) and ppl == pytest.approx(1.0)
    assert code_stats(torch.zeros(0, dtype=torch.long), 4) == (0.0, pytest.approx(1.0))  # empty batch: no NaN


@pytest.mark.parametrize("kind", ["vq", "rvq"])
def test_forward_statistics_are_per_level_means(kind):
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind=kind, codebook_size=16, levels=3 if kind == "rvq" else 1, kmeans_init=False)
    q = build_quantizer(cfg, 8)
    assert isinstance(q, Quantizer) and q.size == 16
    out = q(torch.randn(2, 50, 8))
    idx = out.indices if kind == "rvq" else out.indices[..., None]
    stats = [code_stats(idx[..., i], 16) for i in range(idx.shape[-1])]
    assert out.usage == pytest.approx(sum(s[0] for s in stats) / len(stats))
    assert out.perplexity == pytest.approx(sum(s[1] for s in stats) / len(stats))


@pytest.mark.parametrize("kind", ["vq", "rvq", "fsq"])
def test_bypass_passes_z_through(kind):
    cfg = QuantizerConfig(kind=kind, codebook_size=16, levels=2 if kind == "rvq" else 1)
    q = Quantizer(cfg, 8)
    q.bypass = True
    z = torch.randn(3, 5, 8)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    out = q(z)
    assert out.quantized is z and float(out.loss) == 0.0
    assert out.indices.shape == ((3, 5, 2) if kind == "rvq" else (3, 5)) and not out.indices.any()
    assert math.isnan(out.usage) and math.isnan(out.perplexity)
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items())


@pytest.mark.parametrize("kind", ["vq", "rvq"])
def test_eval_on_an_untrained_kmeans_codebook_does_not_depend_on_the_data(kind):
    # an untrained k-means codebook gets seeded Gaussian codes in eval mode, not a k-means fit of the batch
    def run(seed, shift):
        torch.manual_seed(seed)
        q = Quantizer(QuantizerConfig(kind=kind, codebook_size=16, levels=2 if kind == "rvq" else 1), 8).eval()
        with torch.no_grad():
            q(torch.randn(2, 40, 8) + shift)
        return q, {k: v.clone() for k, v in q.state_dict().items()}

    q, a = run(0, 5.0)
    _, b = run(1, -5.0)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    embeds = [k for k in a if k.endswith("embed")]
    assert embeds and all(a[k].abs().sum() > 0 for k in embeds)  # codes are filled, not left at zero
    for k in embeds:  # the EMA average starts at the codes, so a later EMA step does not pull them to 0
        assert torch.equal(a[k.replace("embed", "embed_avg")], a[k])
    assert all(bool(v) for k, v in a.items() if k.endswith("initted"))
    gen = torch.Generator().manual_seed(0)  # the documented seed: the same codes on every machine
    first = next(k for k in embeds)
    assert torch.equal(a[first], torch.randn(a[first].shape, generator=gen))
    with torch.no_grad():
        q(torch.randn(2, 40, 8) * 100)
    assert all(torch.equal(v, a[k]) for k, v in q.state_dict().items())
