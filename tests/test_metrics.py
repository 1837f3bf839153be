"""unitok.metrics on inputs with known answers."""

import math

import numpy as np
import pytest
import torch

from unitok.metrics import mel_distance, psnr, psnr_from_mse, si_snr, ssim, stft_distance


def _image(seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_psnr_identical_is_capped_and_known_mse_gives_known_db():
    a = _image()
    assert psnr(a, a) == 100.0
    b = a.astype(np.int16)
    b = np.where(b < 128, b + 5, b - 5).astype(np.uint8)  # every pixel off by 5: MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 25))


def test_psnr_from_mse_on_signed_signals():
    assert psnr_from_mse(4.0) == pytest.approx(0.0)
    assert psnr_from_mse(0.04) == pytest.approx(20.0)
    assert psnr_from_mse(0.0) == pytest.approx(10 * math.log10(4e10))  # mse floored at 1e-10
    # agrees with the uint8 PSNR on the same error expressed in [-1, 1] (peak-to-peak 2 <-> 255)
    a = _image()
    b = np.clip(a.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    mse = float(np.mean(((a.astype(np.float64) - b) / 127.5) ** 2))
    assert psnr_from_mse(mse) == pytest.approx(psnr(a, b))


def test_ssim_identical_is_one_known_for_flat_images_and_falls_with_noise():
    a = _image(size=64)
    assert ssim(a, a) == pytest.approx(1.0)
    # flat images: only the luminance term is left, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 * 255)^2
    c1 = (0.01 * 255) ** 2
    flat = lambda v: np.full((32, 32, 3), v, np.uint8)  # noqa: E731
    assert ssim(flat(100), flat(110)) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))
    rng = np.random.default_rng(1)
    noisy = [np.clip(a.astype(np.int16) + rng.integers(-k, k + 1, a.shape), 0, 255).astype(np.uint8) for k in (10, 80)]
    assert 1 > ssim(a, noisy[0]) > ssim(a, noisy[1]) > 0


def test_si_snr_scale_invariant_and_known_for_orthogonal_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16000, generator=g)
    noise = torch.randn(2, 16000, generator=g)
    noise = noise - noise.mean(-1, keepdim=True)
    xc = x - x.mean(-1, keepdim=True)
    noise = noise - (noise * xc).sum(-1, keepdim=True) / xc.pow(2).sum(-1, keepdim=True) * xc  # orthogonal to x
    target_db = 10.0
    noise = noise * (xc.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)) * 10 ** (-target_db / 20)
    y = x + noise
    assert si_snr(y, x).shape == (2,)
    assert torch.allclose(si_snr(y, x), torch.full((2,), target_db), atol=1e-3)
    assert torch.allclose(si_snr(3.7 * y, x), si_snr(y, x), atol=1e-4)  # scale of the estimate
    assert torch.allclose(si_snr(y + 0.5, x), si_snr(y, x), atol=1e-3)  # offset (means are removed)
    assert si_snr(x, x).min() > 60  # identical: limited only by eps and float precision


def test_mel_and_stft_distance_zero_for_identical_positive_otherwise():
    sr = 16000
    t = torch.arange(sr) / sr
    x = (0.5 * torch.sin(2 * math.pi * 440 * t))[None]  # (1, N)
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert mel_distance(x, x, sr) == 0.0
    assert stft_distance(x, x) == 0.0
    assert mel_distance(y, x, sr) > 0.05
    assert stft_distance(y, x) > 0.05
    assert mel_distance(y, x, sr) == pytest.approx(mel_distance(x, y, sr))  # symmetric


def test_ms_ssim_identity_noise_order_and_size_limit():
    """Checked once against pytorch-msssim 1.0 (valid 11-tap Gaussian windows): 0.98184 vs 0.98183 at
    noise sigma 5, 0.85809 vs 0.85807 at 20, 0.67606 vs 0.67602 at 50 (docs/LOG.md)."""
    from skimage import data

    from unitok.metrics import ms_ssim

    a = data.astronaut()[:256, :256]
    rng = np.random.default_rng(0)
    noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8) for s in (5, 20, 50)]
    assert ms_ssim(a, a) == pytest.approx(1.0)
    vals = [ms_ssim(a, b) for b in noisy]
    assert vals == sorted(vals, reverse=True)
    assert vals[0] == pytest.approx(0.98184, abs=2e-4) and vals[2] == pytest.approx(0.67606, abs=2e-4)
    with pytest.raises(ValueError, match="161"):
        ms_ssim(a[:100, :100], a[:100, :100])


def test_cer_counts_edits_over_the_reference_length():
    from unitok.metrics import cer

    assert cer("a cat", "a cat") == 0.0
    assert cer("a bat", "a cat") == pytest.approx(1 / 5)  # one substitution
    assert cer("a cats", "a cat") == pytest.approx(1 / 5) and cer("a ca", "a cat") == pytest.approx(1 / 5)
    assert cer("kitten", "sitting") == pytest.approx(3 / 7)  # the textbook Levenshtein distance
    assert cer("", "abc") == 1.0 and cer("", "") == 0.0 and cer("x", "") == 1.0
    assert cer("a much longer guess", "ab") > 1  # insertions count: a rate, not a fraction
