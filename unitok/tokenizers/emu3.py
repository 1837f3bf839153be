"""Emu3's VQ tokenizer (Wang et al. 2024, "Emu3: Next-Token Prediction is All You Need"), as an image
tokenizer: its weights load name for name from transformers' `Emu3VQVAE` (`model.vqmodel.*` of an
Emu3 folder, `unitok.interop`).

    tok = Emu3ImageTokenizer(Emu3VQConfig(...))
    codes = tok.encode(x)        # x (B, 3, H, W) in [-1, 1]  ->  (B, H/f, W/f) long, f = 2**(len(ch_mult)-1)
    y = tok.decode(codes)        # -> (B, 3, H, W)

A video VQ-VAE used on still images: the image is repeated over `temporal_factor` frames, a 2-D
encoder (taming's, with multi-head attention blocks on the levels named in `attn_levels`) runs per
frame, then causal temporal convolutions (time padded by 2 frames in front) fold the frames into
one latent frame, quantised against one codebook. The decoder differs from taming's: every norm is a
spatial norm, GroupNorm(h) * conv_y(zq) + conv_b(zq) with the quantized latent zq resized to h
(nearest), and temporal upsampling turns the latent frame back into `temporal_factor` frames, of
which an image is the first. Temporal residual blocks use BatchNorm3d (running statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from unitok.tokenizers.base import NeuralTokenizer

__all__ = ["Emu3VQConfig", "Emu3ImageTokenizer"]


@dataclass
class Emu3VQConfig:
    codebook_size: int = 32768
    embed_dim: int = 4  # code dimension; the decoder's spatial norms read the codes at this width
    latent_channels: int = 4  # encoder output / decoder input; Emu3's decoder needs it = embed_dim
    in_channels: int = 3
    out_channels: int = 3
    temporal_factor: int = 4  # frames per latent frame (a power of two)
    ch: int = 256
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_levels: list[int] = field(default_factory=lambda: [3])  # level indices with attention blocks
    attn_heads: int = 1

    def __post_init__(self):
        width = self.ch * self.ch_mult[-1]  # the attention blocks are all this wide (transformers' hidden_size)
        if any(self.ch * self.ch_mult[i] != width for i in self.attn_levels):
            raise ValueError(f"attention levels {self.attn_levels} must all be {width} channels wide (ch * ch_mult[-1])")
        if width % self.attn_heads or self.temporal_factor & (self.temporal_factor - 1):
            raise ValueError("attn_heads must divide ch * ch_mult[-1], and temporal_factor must be a power of two")
        if self.latent_channels != self.embed_dim:
            raise ValueError(f"Emu3's decoder needs latent_channels = embed_dim, got {self.latent_channels} and "
                             f"{self.embed_dim}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class SpatialNorm(nn.Module):
    """GroupNorm of h, scaled and shifted per position by 1x1 convolutions of the codes zq."""

    def __init__(self, zq_channels: int, c: int):
        super().__init__()
        self.norm_layer = _group_norm(c)
        self.conv_y = nn.Conv2d(zq_channels, c, 1)
        self.conv_b = nn.Conv2d(zq_channels, c, 1)

    def forward(self, h, zq):
        zq = F.interpolate(zq, size=h.shape[-2:], mode="nearest")
        return self.norm_layer(h) * self.conv_y(zq) + self.conv_b(zq)


def _norm(c: int, zq_channels: int | None) -> nn.Module:
    return _group_norm(c) if zq_channels is None else SpatialNorm(zq_channels, c)


def _apply(norm: nn.Module, h, zq):
    return norm(h) if zq is None else norm(h, zq)


class ResBlock(nn.Module):
    """Taming's residual block; spatial norms where `zq_channels` is given (decoder)."""

    def __init__(self, cin: int, cout: int, zq_channels: int | None = None):
        super().__init__()
        self.norm1, self.norm2 = _norm(cin, zq_channels), _norm(cout, zq_channels)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, zq=None):
        h = self.conv1(F.silu(_apply(self.norm1, x, zq)))
        h = self.conv2(F.silu(_apply(self.norm2, h, zq)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with linear projections (B, HW, C)."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):  # (B, C, H, W), already normed
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (p(t).view(B, H * W, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return self.out_proj(y).transpose(1, 2).reshape(B, C, H, W)


def _attend(attn: Attention, norm: nn.Module, h, zq):
    return h + attn(_apply(norm, h, zq))


class Middle(nn.Module):
    def __init__(self, c: int, heads: int, zq_channels: int | None = None):
        super().__init__()
        self.block_1 = ResBlock(c, c, zq_channels)
        self.attn_1 = Attention(c, heads)
        self.attn_norm = _norm(c, zq_channels)
        self.block_2 = ResBlock(c, c, zq_channels)

    def forward(self, h, zq=None):
        return self.block_2(_attend(self.attn_1, self.attn_norm, self.block_1(h, zq), zq), zq)


class CausalConv3d(nn.Module):
    """Conv3d padded to keep H and W at stride 1, and by 2 frames in front in time only."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.pad = ()
        for k, s in reversed(list(zip(kernel[1:], stride[1:]))):  # F.pad lists the last axis first
            self.pad += ((k - s + 1) // 2, (k - s) // 2)
        self.pad += (2, 0)
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride)

    def forward(self, x):  # (B, C, T, H, W)
        return self.conv(F.pad(x, self.pad))


class TemporalResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.norm2 = nn.BatchNorm3d(c), nn.BatchNorm3d(c)
        self.conv1, self.conv2 = CausalConv3d(c, c, (3, 3, 3)), CausalConv3d(c, c, (3, 3, 3))

    def forward(self, x):
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class _Conv(nn.Module):
    """One named convolution (`.conv`), for transformers' parameter names."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv


class Encoder(nn.Module):
    """(B, T, in, H, W) frames -> (B, T / temporal_factor, latent, H/f, W/f)."""

    def __init__(self, cfg: Emu3VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down_block = nn.Module()
        self.down_block.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.block, level.attn, level.attn_norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResBlock(block_in, ch * m))
                block_in = ch * m
                if i in cfg.attn_levels:
                    level.attn.append(Attention(block_in, cfg.attn_heads))
                    level.attn_norms.append(_group_norm(block_in))
            if i != len(mult) - 1:
                level.downsample = _Conv(nn.Conv2d(block_in, block_in, 3, stride=2))
            self.down_block.down.append(level)
        self.middle_block = Middle(block_in, cfg.attn_heads)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.latent_channels, 3, padding=1)
        z = cfg.latent_channels
        self.time_conv = nn.ModuleList(_Conv(CausalConv3d(z, z, (4, 3, 3), (2, 1, 1)))
                                       for _ in range(int(math.log2(cfg.temporal_factor))))
        self.time_res_stack = nn.ModuleList(TemporalResBlock(z) for _ in range(cfg.num_res_blocks))

    def forward(self, x):
        B, T = x.shape[:2]
        h = self.conv_in(x.flatten(0, 1))  # frames one by one
        for level in self.down_block.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = _attend(level.attn[j], level.attn_norms[j], h, None)
            if hasattr(level, "downsample"):
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))  # taming's asymmetric padding
        h = self.conv_out(F.silu(self.norm_out(self.middle_block(h))))
        h = h.unflatten(0, (B, T)).transpose(1, 2)  # (B, C, T, h, w)
        for conv in self.time_conv:
            h = F.silu(conv.conv(h))
        for block in self.time_res_stack:
            h = block(h)
        return h.transpose(1, 2)  # (B, T', C, h, w)


class Decoder(nn.Module):
    """(B, T', latent, h, w) and the codes zq (B, T', embed_dim, h, w) -> (B * T' * temporal_factor, out, H, W)."""

    def __init__(self, cfg: Emu3VQConfig):
        super().__init__()
        ch, mult, zc, z = cfg.ch, cfg.ch_mult, cfg.embed_dim, cfg.latent_channels
        self.time_res_stack = nn.ModuleList(TemporalResBlock(z) for _ in range(cfg.num_res_blocks))
        self.time_conv = nn.ModuleList(_Conv(CausalConv3d(z, z, (3, 3, 3)))
                                       for _ in range(int(math.log2(cfg.temporal_factor))))
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, block_in, 3, padding=1)
        self.middle_block = Middle(block_in, cfg.attn_heads, zc)
        self.up_block = nn.Module()
        up = []
        for i in reversed(range(len(mult))):
            level = nn.Module()
            level.block, level.attn, level.attn_norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResBlock(block_in, ch * mult[i], zc))
                block_in = ch * mult[i]
                if i in cfg.attn_levels:
                    level.attn.append(Attention(block_in, cfg.attn_heads))
                    level.attn_norms.append(SpatialNorm(zc, block_in))
            if i != 0:
                level.upsample = _Conv(nn.Conv2d(block_in, block_in, 3, padding=1))
            up.insert(0, level)
        self.up_block.up = nn.ModuleList(up)
        self.norm_out = SpatialNorm(zc, block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, h, zq):
        # the latent and the codes go through the temporal blocks together (one batch), as Emu3's
        both = torch.cat([h, zq]).transpose(1, 2)  # (2B, C, T', h, w)
        for block in self.time_res_stack:
            both = block(both)
        for conv in self.time_conv:  # nearest-neighbour doubling in time, then a causal conv
            both = F.silu(conv.conv(both.repeat_interleave(2, dim=2)))
        h, zq = both.transpose(1, 2).flatten(0, 1).chunk(2)  # frames one by one: 2 x (B * T, C, h, w)
        h = self.middle_block(self.conv_in(h), zq)
        for level in reversed(self.up_block.up):
            for j, block in enumerate(level.block):
                h = block(h, zq)
                if len(level.attn):
                    h = _attend(level.attn[j], level.attn_norms[j], h, zq)
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class Emu3ImageTokenizer(NeuralTokenizer):
    type_name = "image-emu3-vq"
    modality = "image"
    config_class = Emu3VQConfig

    def __init__(self, config: Emu3VQConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(config.codebook_size, config.embed_dim)
        self.quant_conv = CausalConv3d(config.latent_channels, config.embed_dim, (3, 1, 1))
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.latent_channels, (3, 1, 1))

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.config.codebook_size]

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> codes (B, H/f, W/f): the nearest code of each latent."""
        return self.quantize_latents(self.latents(x))

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> z (B, E, H/f, W/f): the quant_conv output of the image as a clip."""
        f = self.downsample
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"expected images (B, {self.config.in_channels}, H, W) with sides a multiple of {f}, "
                             f"got {tuple(x.shape)}")
        frames = x[:, None].expand(-1, self.config.temporal_factor, -1, -1, -1)  # a still image as a clip
        return self.quant_conv(self.encoder(frames).transpose(1, 2))[:, :, 0]  # (B, E, h, w): its one latent frame

    @torch.no_grad()
    def quantize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, E, h, w) -> codes (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.quantize.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()  # squared distances
        return dist.argmin(1).view(z.shape[0], *z.shape[2:])

    @torch.no_grad()
    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> z_q (B, E, h, w)."""
        return self.quantize.embedding(codes.long()).permute(0, 3, 1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> images (B, 3, h*f, w*f): the first of the frames the latent decodes to."""
        return self.decode_latents(self.dequantize(codes))

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, E, h, w) -> images (B, 3, h*f, w*f). The decoder's spatial norms are conditioned on
        the latent too, so a continuous z conditions them as codes' vectors do."""
        zq = z[:, :, None]  # (B, E, 1, h, w)
        h = self.post_quant_conv(zq)
        y = self.decoder(h.transpose(1, 2), zq.transpose(1, 2))  # (B * temporal_factor, out, H, W)
        return y.unflatten(0, (z.shape[0], -1))[:, 0]
