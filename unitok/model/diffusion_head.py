"""Diffusion output head: a modality's continuous tokenizer latent generated from the backbone's states.

    head = DiffusionHead(DiffusionHeadConfig(latent_dim=16), dim=256)
    loss = head.loss(h, z0)                     # h (S, N, dim) conditioning states, z0 (S, N, D) latents
    z = head.sample(h, steps=50, sampler="ddim", cfg_scale=2.0, generator=g)   # (S, N, D)

S spans of N latent tokens each. The condition of latent token j is the backbone's final-normed
hidden state (`UnifiedTransformer.hidden`) at the position just before the token's first code: the
state that predicts that code under next-token prediction, so the head sees what the discrete head
sees and nothing later (teacher forcing: the backbone reads the quantized codes of the latent; during
generation the sampled latent is quantized and its codes fed back). For RVQ tokenizers the L level
positions of a latent frame share one latent token (`tokens_per_latent` = L).

Output projector (states -> condition, width `width`):
  linear      Linear(dim, width) per token.
  mlp         Linear, SiLU, Linear per token (the default).
  resampler   learned queries, one per latent token, cross-attending over the span's states
              (Perceiver resampler; Flamingo), causally: query j reads states 0..j only, so no
              token's condition has seen its own codes. At most `max_tokens` tokens a span.
Denoiser: MAR's design (arXiv 2406.11838, section 3.3): a per-token MLP of `depth` residual blocks,
each a LayerNorm whose shift, scale and gate come from (condition + timestep embedding) (adaptive
layer norm, adaLN-Zero as DiT: gates and the output layer start at zero, so the head starts as the
identity of its residual stream and predicts 0).

Losses (`prediction`): "epsilon" (DDPM: the noise added by `DDPMScheduler.add_noise` at a uniform
timestep of `train_steps`, the cosine schedule `squaredcos_cap_v2` as MAR) or "flow" (rectified flow:
x_t = sigma * noise + (1 - sigma) * z0 at a uniform step of `FlowMatchEulerDiscreteScheduler`'s sigmas,
target the velocity noise - z0, as that scheduler's `step` integrates). Samplers: "ddpm" and "ddim"
(eta 0) for epsilon, "euler" for flow; every schedule and update is diffusers', not rewritten here.
Classifier-free guidance: sampling with `cfg_scale` s != 1 runs the conditional and an unconditional
branch and takes u + s (c - u). The unconditional branch is the states of the unconditional stream
(`uncond`: the unified trainer's condition dropout removes the text before media spans, so the
backbone learns it) or, without them, a learned null condition that replaces a span's condition in
training with probability `cond_dropout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiffusionHeadConfig", "DiffusionHead", "SAMPLERS", "PROJECTORS", "latent_tokens", "latent_grid",
           "code_latents", "latent_codes", "diffusion_head_spec"]

PROJECTORS = ("linear", "mlp", "resampler")
SAMPLERS = {"epsilon": ("ddpm", "ddim"), "flow": ("euler",)}


@dataclass
class DiffusionHeadConfig:
    latent_dim: int  # D: channels of the tokenizer's latent (`latents(x)` is (B, D, *grid))
    tokens_per_latent: int = 1  # code positions per latent token (RVQ levels L; 1 for one codebook)
    projector: Literal["linear", "mlp", "resampler"] = "mlp"
    max_tokens: int = 1024  # resampler only: learned queries (latent tokens a span may have)
    width: int = 256  # condition and denoiser width (MAR-B: 1024)
    depth: int = 3  # denoiser residual blocks (MAR: 3)
    prediction: Literal["epsilon", "flow"] = "epsilon"
    train_steps: int = 1000  # diffusion timesteps of the training schedule
    cond_dropout: float = 0.1  # share of spans trained with the null condition (classifier-free guidance)
    latent_scale: float = 1.0  # the head models z * latent_scale (unit-variance latents train best)

    def __post_init__(self):
        if min(self.latent_dim, self.tokens_per_latent, self.max_tokens, self.width, self.depth, self.train_steps) < 1:
            raise ValueError("latent_dim, tokens_per_latent, max_tokens, width, depth and train_steps must be >= 1")
        if self.projector not in PROJECTORS:
            raise ValueError(f"unknown projector {self.projector!r}; available: {', '.join(PROJECTORS)}")
        if self.prediction not in SAMPLERS:
            raise ValueError(f"unknown prediction {self.prediction!r}; available: {', '.join(SAMPLERS)}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.latent_scale <= 0:
            raise ValueError(f"latent_scale must be positive, got {self.latent_scale}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(M,) timesteps (float) -> (M, dim) sinusoids (cos half, sin half), as the transformer positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return F.pad(emb, (0, dim % 2))


class Resampler(nn.Module):
    """Learned queries cross-attending causally over a span's states: (S, N, dim) -> (S, N, width)."""

    def __init__(self, dim: int, width: int, max_tokens: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        self.kv = nn.Linear(dim, width)
        self.attn = nn.MultiheadAttention(width, num_heads=max(1, width // 64), batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        S, N, _ = h.shape
        if N > self.queries.shape[0]:
            raise ValueError(f"span of {N} latent tokens; the resampler has {self.queries.shape[0]} queries (max_tokens)")
        kv = self.kv(h)
        q = self.queries[:N][None].expand(S, -1, -1)
        future = torch.ones(N, N, dtype=torch.bool, device=h.device).triu(1)  # True = not attended
        x = q + self.attn(q, kv, kv, attn_mask=future, need_weights=False)[0]
        return x + self.ffn(x)


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LayerNorm(x) * (1 + scale) + shift), (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.mod = nn.Linear(width, 3 * width)

    def forward(self, x, c):
        shift, scale, gate = self.mod(F.silu(c)).chunk(3, -1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """Per-token denoiser: (x_t (M, D), timestep (M,), condition (M, width)) -> prediction (M, D)."""

    def __init__(self, latent_dim: int, width: int, depth: int):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(latent_dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_mod = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, latent_dim)
        self.zero_init()

    def zero_init(self) -> None:
        """adaLN-Zero: every gate, the output modulation and the output layer at zero."""
        for m in [*(b.mod for b in self.blocks), self.out_mod, self.out]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, t, c):
        c = c + self.time(timestep_embedding(t, self.width))
        x = self.inp(x)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.out_mod(F.silu(c)).chunk(2, -1)
        return self.out(self.out_norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    def __init__(self, cfg: DiffusionHeadConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.projector == "linear":
            self.projector = nn.Linear(dim, w)
        elif cfg.projector == "mlp":
            self.projector = nn.Sequential(nn.Linear(dim, w), nn.SiLU(), nn.Linear(w, w))
        else:
            self.projector = Resampler(dim, w, cfg.max_tokens)
        self.null_cond = nn.Parameter(torch.zeros(w))  # the dropped condition of classifier-free guidance
        self.denoiser = MLPDenoiser(cfg.latent_dim, w, cfg.depth)

    def reset_parameters(self) -> None:
        """After a parent's blanket init (UnifiedTransformer.reset_parameters): adaLN-Zero again."""
        self.denoiser.zero_init()

    # ------------------------------------------------------------------ schedules (diffusers)
    def scheduler(self, sampler: str | None = None):
        """A fresh diffusers scheduler of this head's training schedule (`sampler`: the one that
        samples with it; None: the training scheduler)."""
        from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

        p = self.cfg.prediction
        if sampler is not None and sampler not in SAMPLERS[p]:
            raise ValueError(f"sampler {sampler!r} does not sample a {p!r} head; use {' or '.join(SAMPLERS[p])}")
        if p == "flow":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.cfg.train_steps)
        # no clipping: latents are not images in [-1, 1]
        kw = dict(num_train_timesteps=self.cfg.train_steps, beta_schedule="squaredcos_cap_v2", clip_sample=False)
        return DDIMScheduler(**kw) if sampler == "ddim" else DDPMScheduler(**kw)

    # ------------------------------------------------------------------ training
    def condition(self, h: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """States (S, N, dim) -> conditions (S, N, width); spans where `drop` (S,) is True get the null one."""
        c = self.projector(h)
        if drop is not None:
            c = torch.where(drop[:, None, None], self.null_cond.to(c.dtype), c)
        return c

    def loss(self, h: torch.Tensor, z0: torch.Tensor, generator: torch.Generator | None = None,
             draws: dict | None = None, reduction: str = "mean") -> torch.Tensor:
        """Mean squared error of the denoiser's prediction for z0 (S, N, D) noised at random
        timesteps, conditioned on the states h (S, N, dim); spans dropped to the null condition
        with probability cond_dropout while training. The random draws come from `generator`, or
        are given in `draws` (`noise` (S, N, D), `steps` (S, N) indices into the training schedule,
        `drop` (S,) bool): a data-parallel trainer draws them per global token, so any number of
        ranks computes the same losses. `reduction` "sum": the sum over tokens of each token's mean
        squared error (a data-parallel trainer divides by the global token count)."""
        S, N, D = z0.shape
        dev = h.device
        if draws is None:
            drop = torch.rand(S, generator=generator, device=dev) < self.cfg.cond_dropout
            noise = torch.randn((S, N, D), generator=generator, device=dev)
            idx = torch.randint(0, self.cfg.train_steps, (S, N), generator=generator, device=dev)
        else:
            drop, noise, idx = draws["drop"], draws["noise"], draws["steps"]
        c = self.condition(h, drop if self.training and self.cfg.cond_dropout > 0 else None).reshape(S * N, -1)
        x0 = z0.reshape(S * N, D).float() * self.cfg.latent_scale
        noise, idx = noise.reshape(S * N, D).float(), idx.reshape(-1)
        sched = self.scheduler()
        if self.cfg.prediction == "epsilon":
            t = idx
            xt, target = sched.add_noise(x0, noise, t), noise
        else:  # sigmas and timesteps of the flow schedule; x_t as its scale_noise, vectorised over tokens
            sigma = sched.sigmas[idx.cpu()].to(dev, x0.dtype)[:, None]
            t = sched.timesteps[idx.cpu()].to(dev)
            xt, target = sigma * noise + (1 - sigma) * x0, noise - x0
        per_token = (self.denoiser(xt.to(c.dtype), t, c).float() - target).pow(2).mean(-1)
        return per_token.sum() if reduction == "sum" else per_token.mean()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, h: torch.Tensor, steps: int = 50, sampler: str | None = None, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None, uncond: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (S, N, D) for the states h (S, N, dim): `steps` denoising steps of `sampler`
        (default: ddim for epsilon, euler for flow), classifier-free guidance `cfg_scale` (1: off)
        against `uncond`, the states of the unconditional stream (the unified trainer's condition
        dropout trains the backbone on it), or the learned null condition when None.
        The same generator state gives the same latents."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        sampler = sampler or SAMPLERS[self.cfg.prediction][-1]
        sched = self.scheduler(sampler)
        sched.set_timesteps(steps, device=h.device)
        S, N, _ = h.shape
        c = self.condition(h).reshape(S * N, -1)
        guided = cfg_scale != 1.0
        if guided:
            u = self.null_cond.to(c.dtype).expand_as(c) if uncond is None else self.condition(uncond).reshape(S * N, -1)
            c = torch.cat([c, u])
        # pure noise at the schedule's first step (the flow scheduler states it as its first sigma, 1)
        first = sched.init_noise_sigma if self.cfg.prediction == "epsilon" else float(sched.sigmas[0])
        x = torch.randn((S * N, self.cfg.latent_dim), generator=generator, device=h.device) * first
        for t in sched.timesteps:
            xin = torch.cat([x, x]) if guided else x
            out = self.denoiser(xin.to(c.dtype), t.expand(xin.shape[0]), c).float()
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + cfg_scale * (cond - uncond)
            x = sched.step(out, t, x, generator=generator).prev_sample
        return (x / self.cfg.latent_scale).reshape(S, N, -1)


def latent_tokens(z: torch.Tensor) -> torch.Tensor:
    """A tokenizer latent (B, D, *grid) -> (B, N, D) tokens, N = prod(grid) in row-major order: the
    order of the span's code positions (position-major, levels minor: `UnifiedVocab.pack`)."""
    return z.flatten(2).transpose(1, 2)


def latent_grid(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, N, D) tokens -> the tokenizer latent (B, D, *grid) that `decode_latents` takes."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


GRID_AXES = {"image": 2, "video": 3, "audio": 1}  # latent grid axes of each media tokenizer


def code_latents(tok, codes: torch.Tensor) -> torch.Tensor:
    """Latent tokens of codes in sequence order: codes (M, L) (the L levels of each latent token)
    -> (M, D), through `tok.dequantize` on a grid of one row of M positions (every media tokenizer
    dequantizes each position on its own)."""
    M, L = codes.shape
    grid = codes.T.reshape(L, *([1] * (GRID_AXES[tok.modality] - 1)), M)[None]  # (1, L, 1, .., M)
    if L == 1 and tok.modality != "audio":  # single-codebook image and video codes have no level axis
        grid = grid[:, 0]
    return latent_tokens(tok.dequantize(grid))[0]


def latent_codes(tok, z: torch.Tensor) -> torch.Tensor:
    """The inverse direction of `code_latents`: latent tokens (M, D) -> their codes (M, L) in sequence
    order, by `tok.quantize_latents` (the codes `encode` would give for media with these latents)."""
    M, D = z.shape
    grid = z.T.reshape(1, D, *([1] * (GRID_AXES[tok.modality] - 1)), M)  # (1, D, 1, .., M)
    return tok.quantize_latents(grid).reshape(-1, M).T  # leading axes: the L levels


def diffusion_head_spec(tok) -> dict:
    """The tokenizer's part of a diffusion head's config: latent_dim and tokens_per_latent."""
    L = tok.num_levels
    return {"latent_dim": int(code_latents(tok, torch.zeros(1, L, dtype=torch.long)).shape[1]), "tokens_per_latent": L}
