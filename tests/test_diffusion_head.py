"""The diffusion output head (issue 24, part 3): projectors, the adaLN MLP denoiser, epsilon and flow
losses on diffusers' schedules, DDPM/DDIM/Euler sampling, classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

from unitok.model.diffusion_head import DiffusionHead, DiffusionHeadConfig, latent_grid, latent_tokens


def _head(**kw):
    torch.manual_seed(0)
    cfg = dict(latent_dim=4, width=64, depth=2, max_tokens=8)
    cfg.update(kw)
    return DiffusionHead(DiffusionHeadConfig(**cfg), dim=16)


def _eval_loss(head, h, z0):
    """The loss at 8 fixed noise draws (no condition dropout): comparable before and after training."""
    head.eval()
    return sum(head.loss(h, z0, torch.Generator().manual_seed(k)).item() for k in range(8)) / 8


@pytest.mark.parametrize("prediction,projector", [("epsilon", "mlp"), ("flow", "resampler"), ("epsilon", "linear")])
def test_loss_falls_and_samples_approach_the_overfit_latents(prediction, projector):
    """Stated amount: after 200 AdamW steps on 3 spans x 5 tokens the held-noise loss is below 40% of
    its start, and the sampled latents are closer to their targets than the targets' variance / 2."""
    head = _head(prediction=prediction, projector=projector)
    g = torch.Generator().manual_seed(0)
    h, z0 = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 4, generator=g)
    before = _eval_loss(head, h, z0)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    head.train()
    for _ in range(200):
        loss = head.loss(h, z0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _eval_loss(head, h, z0)
    print(f"{prediction}/{projector}: loss {before:.3f} -> {after:.3f}")
    assert after < 0.4 * before
    z = head.sample(h, steps=25, generator=torch.Generator().manual_seed(1))
    err = (z - z0).pow(2).mean().item()
    print(f"sample mse {err:.3f}, target variance {z0.var().item():.3f}")
    assert z.shape == z0.shape and err < 0.5 * z0.var().item()


def test_a_fresh_head_predicts_zero():
    """adaLN-Zero: gates and output layer start at zero (so the epsilon loss starts at E[noise^2] = 1)."""
    head = _head()
    out = head.denoiser(torch.randn(6, 4), torch.arange(6).float(), torch.randn(6, 64))
    assert torch.equal(out, torch.zeros(6, 4))


@pytest.mark.parametrize("prediction,sampler", [("epsilon", "ddpm"), ("epsilon", "ddim"), ("flow", "euler")])
def test_sampling_with_a_seed_is_reproducible(prediction, sampler):
    head = _head(prediction=prediction).eval()
    for p in head.denoiser.parameters():  # leave adaLN-Zero, so the samples depend on the condition
        torch.nn.init.normal_(p, std=0.1)
    h = torch.randn(2, 3, 16)
    a, b, c = (head.sample(h, steps=6, sampler=sampler, cfg_scale=1.5, generator=torch.Generator().manual_seed(s))
               for s in (7, 7, 8))
    assert a.shape == (2, 3, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_must_match_the_prediction():
    with pytest.raises(ValueError, match="sampler 'euler' does not sample a 'epsilon' head"):
        _head().sample(torch.randn(1, 2, 16), sampler="euler")
    with pytest.raises(ValueError, match="sampler 'ddim' does not sample a 'flow' head"):
        _head(prediction="flow").sample(torch.randn(1, 2, 16), sampler="ddim")
    with pytest.raises(ValueError, match="unknown projector 'conv'"):
        DiffusionHeadConfig(latent_dim=4, projector="conv")


def test_guidance_scale_zero_ignores_the_condition_and_dropout_uses_the_null_condition():
    head = _head().eval()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    h1, h2 = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    s = lambda h, scale: head.sample(h, steps=4, cfg_scale=scale, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s(h1, 0.0), s(h2, 0.0), atol=1e-6)  # only the null branch counts
    assert not torch.allclose(s(h1, 1.0), s(h2, 1.0))
    # the unconditional branch from other states (the backbone's unconditional stream): scale 0 gives
    # the samples of those states, conditioned
    assert torch.allclose(head.sample(h1, steps=4, cfg_scale=0.0, uncond=h2, generator=torch.Generator().manual_seed(0)),
                          s(h2, 1.0), atol=1e-6)
    drop = torch.tensor([True, False])
    c = head.condition(h1, drop)
    assert torch.equal(c[0], head.null_cond.expand(3, -1)) and torch.equal(c[1], head.condition(h1)[1])


def test_resampler_is_causal():
    """Query j reads states 0..j: changing later states leaves earlier conditions as they were."""
    head = _head(projector="resampler").eval()
    h = torch.randn(1, 6, 16)
    h2 = h.clone()
    h2[:, 4:] = torch.randn(1, 2, 16)
    a, b = head.condition(h), head.condition(h2)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])
    with pytest.raises(ValueError, match="span of 9 latent tokens"):
        head.condition(torch.randn(1, 9, 16))


@torch.no_grad()
@pytest.mark.parametrize("kind", ["image", "video", "audio"])
def test_generated_latent_has_the_decoders_shape(kind):
    """Tokens sampled for a span, put back on the tokenizer's grid, decode as codes do."""
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.video import VideoTokenizer, video_preset

    torch.manual_seed(0)
    tok, x = {"image": (lambda: ImageTokenizer(image_preset("debug")), (1, 3, 8, 12)),
              "video": (lambda: VideoTokenizer(video_preset("debug")), (1, 3, 5, 8, 8)),
              "audio": (lambda: AudioTokenizer(AudioTokenizerConfig.tiny()), (1, 1, 512))}[kind]
    tok = tok().eval()
    x = torch.rand(x) * 2 - 1
    z = tok.latents(x)
    tokens = latent_tokens(z)
    assert torch.equal(latent_grid(tokens, z.shape[2:]), z)
    head = DiffusionHead(DiffusionHeadConfig(latent_dim=z.shape[1], width=32, depth=1), dim=16).eval()
    sampled = head.sample(torch.randn(1, tokens.shape[1], 16), steps=2, generator=torch.Generator().manual_seed(0))
    zs = latent_grid(sampled, z.shape[2:])
    assert zs.shape == z.shape
    assert tok.decode_latents(zs).shape == tok.decode(tok.encode(x)).shape


@torch.no_grad()
def test_code_latents_follow_the_sequence_order():
    """code_latents of (M, L) codes in the span's order (position-major, levels minor) are the
    dequantized latent's tokens: for residual image codes and RVQ audio (levels sharing a frame)."""
    from unitok.model.diffusion_head import code_latents, diffusion_head_spec
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset, with_quantizer

    torch.manual_seed(0)
    img = ImageTokenizer(with_quantizer(image_preset("debug"), kind="rvq", levels=2)).eval()
    codes = img.encode(torch.rand(1, 3, 8, 12) * 2 - 1)  # (1, 2, 2, 3)
    seq = codes[0].flatten(1).T  # (6, 2): position-major, levels minor
    assert torch.equal(code_latents(img, seq), latent_tokens(img.dequantize(codes))[0])
    assert diffusion_head_spec(img) == {"latent_dim": 16, "tokens_per_latent": 2}
    aud = AudioTokenizer(AudioTokenizerConfig.tiny()).eval()
    codes = aud.encode(torch.randn(1, 1, 512))  # (1, L, T')
    assert torch.equal(code_latents(aud, codes[0].T), latent_tokens(aud.dequantize(codes))[0])
    assert diffusion_head_spec(aud)["tokens_per_latent"] == aud.num_levels
