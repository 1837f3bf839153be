"""Quantizers for the media tokenizers: one small config, one wrapper, built on vector-quantize-pytorch.

    q = build_quantizer(QuantizerConfig(kind="vq", codebook_size=1024, codebook_dim=8), dim=256)
    out = q(z)              # z (B, N, D) channel-last vectors
    out.quantized           # (B, N, D)  straight-through (or rotation-trick) output
    out.indices             # (B, N) long, or (B, N, L) for residual VQ
    out.loss                # scalar auxiliary loss (0 for FSQ; LFQ's entropy loss can be negative)
    out.usage, out.perplexity   # batch statistics (floats, averaged over RVQ levels)
    q.indices_to_codes(out.indices)  # (B, N, D) == out.quantized in eval mode

Kinds (papers):
  vq     VQ-VAE (van den Oord 2017) with EMA codebook updates, k-means init, cosine codes
         (ViT-VQGAN, Yu 2021), low-dimensional lookup (LlamaGen, Sun 2024), dead-code expiry.
  rvq    residual VQ (SoundStream, Zeghidour 2021): `levels` stacked VQs with the same options.
  fsq    finite scalar quantization (Mentzer 2023): no codebook, no loss; size = prod(fsq_levels).
  lfq    lookup-free quantization (MAGVIT-v2, Yu 2023) with its entropy loss; size = 2**bits.
  simvq  SimVQ (Zhu 2024): frozen random codebook through a learned linear map.

Dead-code expiry: `dead_code_threshold` is compared with each code's EMA hit count per step, an
absolute count (counts start at 1): vector-quantize-pytorch 1.32's `threshold_ema_dead_code`, the
meaning every preset was trained with. 1.34 reads a value below 1 as a fraction of the mean count
instead and has no absolute option, so pyproject.toml pins 1.32. The threshold must be well below
tokens_per_step / codebook_size, or every code is replaced every step;
`check_dead_code_threshold` raises a ConfigError for that case (the trainers call it).

DDP: EMA codebooks are buffers. vector-quantize-pytorch all-reduces the EMA statistics and the
k-means init when torch.distributed is initialised *before* the quantizer is built, so build the
model after `init_process_group`; every rank then holds the same codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from unitok.errors import ConfigError

__all__ = ["QuantizerConfig", "Quantizer", "QuantOut", "build_quantizer", "check_dead_code_threshold",
           "code_stats", "kmeans"]


@dataclass
class QuantizerConfig:
    kind: Literal["vq", "rvq", "fsq", "lfq", "simvq"] = "vq"
    codebook_size: int = 1024  # vq / rvq / simvq / lfq (a power of two for lfq); fsq uses fsq_levels
    codebook_dim: int | None = None  # low-dimensional lookup space (LlamaGen uses 8); None = input dim
    levels: int = 1  # rvq: number of residual quantizers
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    ema: bool = True  # EMA codebook updates (False: codebook learned by gradient, as in taming)
    decay: float = 0.99  # EMA decay
    kmeans_init: bool = True  # initialise the codebook by k-means on the first batch
    cosine: bool = False  # l2-normalised codes and inputs (cosine-similarity lookup)
    dead_code_threshold: float = 0.0  # replace codes whose EMA hit count falls below this (0 = off)
    commitment_weight: float = 0.25
    rotation_trick: bool = False  # rotation trick (Fifty 2024) instead of straight-through
    entropy_weight: float = 0.1  # lfq entropy loss weight

    def __post_init__(self):
        if self.codebook_size < 2:
            raise ValueError("codebook_size must be at least 2")
        if self.kind == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"lfq needs a power-of-two codebook_size, got {self.codebook_size}")
        if self.kind == "rvq" and self.levels < 1:
            raise ValueError("rvq needs levels >= 1")
        if self.kind != "rvq" and self.levels != 1:
            raise ValueError(f"levels={self.levels} is only for kind 'rvq'")

    @property
    def size(self) -> int:
        """Number of codes per level."""
        return math.prod(self.fsq_levels) if self.kind == "fsq" else self.codebook_size

    @property
    def num_levels(self) -> int:
        return self.levels if self.kind == "rvq" else 1


@dataclass
class QuantOut:
    quantized: torch.Tensor  # (B, N, D)
    indices: torch.Tensor  # (B, N) or (B, N, L)
    loss: torch.Tensor  # scalar
    usage: float  # fraction of codes hit in this batch (mean over levels)
    perplexity: float  # exp(entropy of the batch's code histogram) (mean over levels)


def code_stats(indices: torch.Tensor, size: int) -> tuple[float, float]:
    """(usage, perplexity) of one level's indices."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=size).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).float().mean().item(), entropy.exp().item()


def check_dead_code_threshold(cfg: QuantizerConfig, tokens_per_step: int, source: str = "config") -> None:
    """Error if dead-code expiry would fire for every code every step."""
    if cfg.kind not in ("vq", "rvq") or cfg.dead_code_threshold <= 0:
        return
    mean_hits = tokens_per_step / cfg.size
    if cfg.dead_code_threshold > 0.5 * mean_hits:
        raise ConfigError(
            f"{source}: dead_code_threshold {cfg.dead_code_threshold} is not well below the mean hits per code "
            f"per step ({tokens_per_step} tokens / {cfg.size} codes = {mean_hits:.2f}); use at most {0.25 * mean_hits:.2f}")


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int, cosine: bool = False, chunk: int | None = None,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of x (M, D) from k random points; empty clusters are re-seeded from the
    points farthest from their centre. `cosine`: unit-norm centres (spherical k-means, x should be
    unit-norm too). `chunk`: assign that many points at a time (bounds the (chunk, k) distance
    matrix; None = all at once). Returns (centres (k, D), counts (k,))."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    c = x[torch.randperm(x.shape[0], generator=g, device=x.device)[:k]].clone()
    if c.shape[0] < k:
        c = torch.cat([c, c[torch.randint(0, c.shape[0], (k - c.shape[0],), generator=g, device=x.device)]])

    def assign(c):  # -> (nearest centre, distance to it) of every point
        parts = [torch.cdist(xs, c).min(-1) for xs in (x.split(chunk) if chunk else [x])]
        return torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts])

    for _ in range(iters):
        idx, dist = assign(c)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        if cosine:
            c = torch.nn.functional.normalize(c, dim=-1)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = dist.topk(min(len(empty), x.shape[0])).indices
            c[empty[: len(far)]] = x[far]
    return c, torch.bincount(assign(c)[0], minlength=k).float()


class Quantizer(nn.Module):
    """One of the quantizers above behind one forward: (B, N, D) -> QuantOut."""

    def __init__(self, cfg: QuantizerConfig, dim: int):
        super().__init__()
        import vector_quantize_pytorch as vqp

        self.cfg, self.dim = cfg, dim
        self.bypass = False  # trainer warm-up: pass z through unquantised (codebooks untouched)
        self.frozen = False  # after `refit`: codebook fixed (no EMA, no dead-code expiry), even in train()
        vq_kwargs = dict(
            codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim, decay=cfg.decay,
            kmeans_init=cfg.kmeans_init, use_cosine_sim=cfg.cosine,
            threshold_ema_dead_code=cfg.dead_code_threshold, commitment_weight=cfg.commitment_weight,
            rotation_trick=cfg.rotation_trick, straight_through=False,
            ema_update=cfg.ema, learnable_codebook=not cfg.ema,
        )
        if cfg.kind == "vq":
            self.vq = vqp.VectorQuantize(dim=dim, **vq_kwargs)
        elif cfg.kind == "rvq":
            self.vq = vqp.ResidualVQ(dim=dim, num_quantizers=cfg.levels, **vq_kwargs)
        elif cfg.kind == "fsq":
            self.vq = vqp.FSQ(levels=list(cfg.fsq_levels), dim=dim)
        elif cfg.kind == "lfq":
            self.vq = vqp.LFQ(dim=dim, codebook_size=cfg.codebook_size, entropy_loss_weight=cfg.entropy_weight,
                              commitment_loss_weight=cfg.commitment_weight)
        elif cfg.kind == "simvq":
            self.vq = vqp.SimVQ(dim=dim, codebook_size=cfg.codebook_size, rotation_trick=cfg.rotation_trick,
                                commitment_weight=cfg.commitment_weight)
        else:  # guarded by the Literal type in from_dict; kept for direct construction
            raise ConfigError(f"unknown quantizer kind {cfg.kind!r}")

    @property
    def size(self) -> int:
        return self.cfg.size

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)

    @torch.no_grad()
    def refit(self, z: torch.Tensor, iters: int = 20) -> float:
        """Refit the codebook by k-means on z (M, D), this quantizer's inputs (e.g. the latents of
        many crops under the current encoder), in its lookup space (after the low-dimensional
        projection, unit-norm for cosine codes); EMA state is reset to the fit. Returns the fraction
        of codes with at least one vector of z. `kind: vq` only."""
        if self.cfg.kind != "vq":
            raise ConfigError(f"codebook refit is implemented for kind 'vq', not {self.cfg.kind!r}")
        cb = self.vq._codebook
        x = cb.transform_input(self.vq.project_in(z.float()))  # l2-normalised for cosine codes
        centres, counts = kmeans(x, self.cfg.codebook_size, iters, cosine=self.cfg.cosine, chunk=4096)
        cb.embed.copy_(centres[None].to(cb.embed))
        cb.embed_avg.copy_((centres * counts.clamp_min(1e-3)[:, None])[None].to(cb.embed_avg))
        cb.cluster_size.copy_(counts.clamp_min(1e-3)[None].to(cb.cluster_size))
        cb.initted.fill_(True)
        return float((counts > 0).float().mean())

    @torch.no_grad()
    def _init_for_eval(self) -> None:
        """An untrained k-means codebook is all zeros and would be k-means-initialised on the first
        batch even in eval mode (mutating the model during `encode`); fill it with seeded Gaussian codes."""
        gen = torch.Generator().manual_seed(0)
        for m in self.vq.modules():
            if hasattr(m, "initted") and hasattr(m, "embed") and not bool(m.initted):
                m.embed.copy_(torch.randn(m.embed.shape, generator=gen).to(m.embed))
                if hasattr(m, "embed_avg"):
                    m.embed_avg.copy_(m.embed)
                m.initted.fill_(True)

    def forward(self, z: torch.Tensor) -> QuantOut:  # z (B, N, D)
        if self.bypass:
            nan = float("nan")
            shape = z.shape[:2] + ((self.cfg.num_levels,) if self.cfg.kind == "rvq" else ())
            return QuantOut(z, torch.zeros(shape, dtype=torch.long, device=z.device), z.new_zeros(()), nan, nan)
        if not self.training:
            self._init_for_eval()
        z = z.float()  # codebook distances in fp32 (bf16 ties pick wrong codes)
        with torch.autocast(z.device.type, enabled=False):
            if self.cfg.kind == "fsq":
                q, idx = self.vq(z)
                loss = z.new_zeros(())
            else:
                q, idx, loss = self.vq(z)
                loss = loss.sum()
        if idx.dim() == 2:
            usage, ppl = code_stats(idx, self.size)
        else:  # (B, N, L)
            stats = [code_stats(idx[..., i], self.size) for i in range(idx.shape[-1])]
            usage, ppl = sum(s[0] for s in stats) / len(stats), sum(s[1] for s in stats) / len(stats)
        return QuantOut(q, idx.long(), loss, usage, ppl)

    @torch.no_grad()
    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, N, L) indices -> (B, N, D) quantized vectors."""
        k = self.cfg.kind
        if k == "vq":
            return self.vq.get_output_from_indices(indices)
        if k == "rvq":
            return self.vq.get_output_from_indices(indices)
        if k in ("fsq", "lfq", "simvq"):
            return self.vq.indices_to_codes(indices)
        raise ConfigError(f"unknown quantizer kind {k!r}")


def build_quantizer(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return Quantizer(cfg, dim)
