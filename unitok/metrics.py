"""Evaluation metrics shared by the trainers and the benchmarks (the one home of these formulas).

Images (uint8 (H, W, 3) arrays, peak 255):
* `psnr(a, b)`: PSNR in dB, capped at 100 dB for identical inputs.
* `ssim(a, b)`: SSIM (scikit-image, Gaussian window as Wang et al. 2004, mean over channels).
* `psnr_from_mse(mse)`: PSNR in dB of a mean squared error measured on [-1, 1] signals (peak-to-peak 2).
* `ms_ssim(a, b)`: multi-scale SSIM (Wang et al. 2003: 5 scales, their weights), images of at least
  161 pixels a side; mean over channels.

Audio (float tensors, time on the last axis):
* `si_snr(y, x)`: scale-invariant SNR in dB per signal (differentiable; used as a loss too).
* `mel_distance(y, x, sr)`: mean |log10 mel(y) - log10 mel(x)|, 80 bands, n_fft 1024, hop 256, floor 1e-5.
* `stft_distance(y, x)`: mean |log10 |STFT(y)| - log10 |STFT(x)||, n_fft 512/1024/2048, hop n_fft/4, floor 1e-5.

Text:
* `cer(hyp, ref)`: character error rate, Levenshtein distance / len(ref) (1.0 for an empty reference
  unless both are empty).
* `wer(hyp, ref)`: word error rate of a string or of a corpus (lists: all edits over all reference
  words, as jiwer's `wer(ref, hyp)`, which a test checks); words are split at whitespace.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unitok.data.audio import log_mel

__all__ = ["psnr", "psnr_from_mse", "ssim", "ms_ssim", "MS_SSIM_MIN_SIZE", "si_snr", "mel_distance",
           "stft_distance", "cer", "wer"]


# ---------------------------------------------------------------- images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (peak 255); capped at 100 dB for identical inputs."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * math.log10(255.0 ** 2 / mse))


def psnr_from_mse(mse: float, eps: float = 1e-10) -> float:
    """PSNR in dB of a mean squared error between [-1, 1] signals (peak-to-peak 2: 10 log10(4 / mse))."""
    return 10 * math.log10(4.0 / max(mse, eps))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 (H, W, 3) images (scikit-image, Gaussian window as Wang et al. 2004, mean over channels)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = 161  # the coarsest of 5 scales (1/16) must hold the 11-tap window


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 (H, W, C) images: contrast-structure at 5 scales (2x average
    pooling between them), luminance at the coarsest, Gaussian window sigma 1.5 truncated at 11 taps."""
    from scipy.ndimage import gaussian_filter

    if min(a.shape[:2]) < MS_SSIM_MIN_SIZE:
        raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE} pixels a side, got {a.shape[:2]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)
    # 11-tap Gaussian, statistics only where the window fits inside the image ("valid", as the paper)
    blur = lambda z: gaussian_filter(z, sigma=(1.5, 1.5, 0), truncate=3.5)[5:-5, 5:-5]  # noqa: E731
    out = 1.0
    for i, w in enumerate(MS_SSIM_WEIGHTS):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        cs = np.mean((2 * cxy + c2) / (vx + vy + c2), axis=(0, 1))  # per channel
        if i == len(MS_SSIM_WEIGHTS) - 1:
            lum = np.mean((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1), axis=(0, 1))
            out *= np.mean(np.clip(lum * cs, 0, None)) ** w
        else:
            out *= np.mean(np.clip(cs, 0, None)) ** w
            H, W = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
            x = x[:H, :W].reshape(H // 2, 2, W // 2, 2, -1).mean((1, 3))
            y = y[:H, :W].reshape(H // 2, 2, W // 2, 2, -1).mean((1, 3))
    return float(out)


# ---------------------------------------------------------------- audio


def si_snr(y: torch.Tensor, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB of estimate y against reference x, over the last axis: (...,)."""
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    proj = (y * x).sum(-1, keepdim=True) / (x.pow(2).sum(-1, keepdim=True) + eps) * x
    noise = y - proj
    return 10 * torch.log10((proj.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def mel_distance(y: torch.Tensor, x: torch.Tensor, sr: int) -> float:
    """Mean absolute difference of log10 mel spectrograms (80 bands, n_fft 1024, hop 256)."""
    return float((log_mel(y, sr, 1024, 256, 80) - log_mel(x, sr, 1024, 256, 80)).abs().mean())


def stft_distance(y: torch.Tensor, x: torch.Tensor) -> float:
    """Mean |log10 |STFT|| difference over n_fft 512, 1024, 2048 (hop n_fft/4)."""
    out = []
    for n in (512, 1024, 2048):
        w = torch.hann_window(n)
        sy = torch.stft(y.reshape(-1, y.shape[-1]), n, n // 4, window=w, return_complex=True).abs().clamp_min(1e-5)
        sx = torch.stft(x.reshape(-1, x.shape[-1]), n, n // 4, window=w, return_complex=True).abs().clamp_min(1e-5)
        out.append(float((sy.log10() - sx.log10()).abs().mean()))
    return sum(out) / len(out)


# ---------------------------------------------------------------- text


def _edits(hyp, ref) -> int:
    """Levenshtein distance of two sequences (insertions, deletions, substitutions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def cer(hyp: str, ref: str) -> float:
    """Character error rate: edits (insertions, deletions, substitutions) turning ref into hyp, over len(ref)."""
    if not ref:
        return 0.0 if not hyp else 1.0
    return _edits(hyp, ref) / len(ref)


def wer(hyp: str | list[str], ref: str | list[str]) -> float:
    """Word error rate: word edits turning ref into hyp over the words of ref; for lists (a corpus), the
    sum of the edits over the sum of the reference words. An empty reference word list is an error."""
    hyps, refs = ([hyp], [ref]) if isinstance(ref, str) else (list(hyp), list(ref))
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    words = [r.split() for r in refs]
    if not all(words):
        raise ValueError("a reference has no words")
    return sum(_edits(h.split(), w) for h, w in zip(hyps, words)) / sum(map(len, words))
