"""Losses and the discriminator for EnCodec training (all on torch.stft; no torchaudio).

    rec = ReconstructionLoss(sample_rate=16000)
    parts = rec(y, x)                  # {"l1", "mel", "sisnr"} scalars; y, x (B, C, N)
    disc = MultiScaleSTFTDiscriminator(channels=1)
    logits, feats = disc(x)            # lists over scales
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unitok.data.audio import mel_filterbank
from unitok.metrics import si_snr

__all__ = ["ReconstructionLoss", "MultiScaleSTFTDiscriminator", "discriminator_loss",
           "generator_adv_loss", "feature_matching_loss", "LossBalancer"]


class ReconstructionLoss(nn.Module):
    """L1 on the waveform, multi-scale log-mel L1 (+ linear mel L2, as EnCodec), negative SI-SNR and
    1 - waveform correlation (both waveform-matching, scale-invariant)."""

    def __init__(self, sample_rate: int, n_ffts: list[int] = (256, 512, 1024, 2048), n_mels: int = 64):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_ffts = list(n_ffts)
        self.n_mels = n_mels
        for n in self.n_ffts:
            self.register_buffer(f"fb{n}", mel_filterbank(sample_rate, n, min(n_mels, n // 4)), persistent=False)
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)

    def mel(self, x: torch.Tensor, n: int) -> torch.Tensor:
        spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), n, n // 4, window=getattr(self, f"win{n}"),
                          return_complex=True)  # (B*C, F, frames)
        mag = (spec.real.pow(2) + spec.imag.pow(2) + 1e-10).sqrt()
        return getattr(self, f"fb{n}") @ mag  # (B*C, M, frames)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, x = y.float(), x.float()
        mel_l1, mel_l2 = 0.0, 0.0
        for n in self.n_ffts:
            my, mx = self.mel(y, n), self.mel(x, n)
            mel_l1 = mel_l1 + (my.clamp_min(1e-5).log10() - mx.clamp_min(1e-5).log10()).abs().mean()
            mel_l2 = mel_l2 + F.mse_loss(my, mx)
        k = len(self.n_ffts)
        x0 = x - x.mean(-1, keepdim=True)
        y0 = y - y.mean(-1, keepdim=True)
        # 1 - normalised correlation rho: SI-SNR = 10 log10(rho^2 / (1 - rho^2)), so this maximises
        # SI-SNR with a bounded, well-conditioned gradient even when the waveforms are unrelated
        rho = (x0 * y0).sum(-1) / (x0.norm(dim=-1) * y0.norm(dim=-1) + 1e-8)
        return {
            "l1": (y - x).abs().mean(),
            "mel": mel_l1 / k + mel_l2 / k,
            "sisnr": -si_snr(y, x).clamp(max=50).mean(),
            "corr": (1 - rho).mean(),
        }


class _STFTDisc(nn.Module):
    """2-D conv stack over one complex STFT (real and imaginary parts as channels)."""

    def __init__(self, channels: int, n_fft: int, filters: int = 16, n_layers: int = 3):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        wn = nn.utils.parametrizations.weight_norm
        convs = [wn(nn.Conv2d(2 * channels, filters, (3, 9), padding=(1, 4)))]
        for i in range(n_layers):
            d = 2 ** i
            convs.append(wn(nn.Conv2d(filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4))))
        convs.append(wn(nn.Conv2d(filters, filters, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.out = wn(nn.Conv2d(filters, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor):
        B, C, N = x.shape
        spec = torch.stft(x.reshape(B * C, N).float(), self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        z = torch.view_as_real(spec)  # (B*C, F, T, 2)
        z = z.reshape(B, C, *z.shape[1:]).permute(0, 1, 4, 3, 2).reshape(B, 2 * C, z.shape[2], z.shape[1])  # (B, 2C, T, F)
        feats = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.2)
            feats.append(z)
        return self.out(z), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec-style MS-STFT discriminator: one small 2-D conv net per STFT size."""

    def __init__(self, channels: int = 1, n_ffts: list[int] = (1024, 512, 256), filters: int = 16):
        super().__init__()
        self.discs = nn.ModuleList([_STFTDisc(channels, n, filters) for n in n_ffts])

    def forward(self, x: torch.Tensor):
        logits, feats = [], []
        for d in self.discs:
            lg, ft = d(x)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


def discriminator_loss(real_logits, fake_logits) -> torch.Tensor:
    """Hinge loss for the discriminator."""
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)) / len(real_logits)


def generator_adv_loss(fake_logits) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f in fake_logits) / len(fake_logits)


def feature_matching_loss(real_feats, fake_feats) -> torch.Tensor:
    """Relative L1 between discriminator features of real and generated audio."""
    total, n = 0.0, 0
    for rs, fs in zip(real_feats, fake_feats):
        for r, f in zip(rs, fs):
            total = total + (f - r.detach()).abs().mean() / (r.detach().abs().mean() + 1e-6)
            n += 1
    return total / max(n, 1)


class LossBalancer:
    """EnCodec's loss balancer: each loss contributes a gradient on the model output whose norm
    is its weight's share of a fixed total, so weights mean proportions, not scales.

        balancer = LossBalancer({"mel": 1.0, "sisnr": 0.5})
        balancer.backward({"mel": l_mel, "sisnr": l_sisnr}, y)   # instead of loss.backward()
    """

    def __init__(self, weights: dict[str, float], total_norm: float = 1.0, decay: float = 0.999):
        self.weights = {k: w for k, w in weights.items() if w > 0}
        self.total_norm = total_norm
        self.decay = decay
        self.norms: dict[str, float] = {}
        self.count = 0.0

    def backward(self, losses: dict[str, torch.Tensor], y: torch.Tensor, other: torch.Tensor | None = None) -> None:
        """Backpropagate the balanced losses through y (and `other`, unbalanced, e.g. commitment)."""
        grads = {}
        for k, w in self.weights.items():
            (g,) = torch.autograd.grad(losses[k], y, retain_graph=True)
            grads[k] = g
            n = g.norm().item()
            self.norms[k] = self.decay * self.norms.get(k, 0.0) + n
        self.count = self.decay * self.count + 1
        total_w = sum(self.weights.values())
        g_out = torch.zeros_like(y)
        for k, g in grads.items():
            avg = self.norms[k] / self.count
            g_out += self.total_norm * self.weights[k] / total_w * g / (avg + 1e-12)
        tensors, grad_tensors = [y], [g_out]
        if other is not None and other.requires_grad:
            tensors.append(other)
            grad_tensors.append(torch.ones_like(other))
        torch.autograd.backward(tensors, grad_tensors)
