"""Video tokenizer: a causal 3D-convolution VQ autoencoder, or an image tokenizer applied per frame.

    tok = VideoTokenizer(video_preset("f8t4"))
    codes = tok.encode(x)     # x (B, 3, T, H, W) in [-1, 1], T = 1 + 4k  ->  (B, 1 + k, H/8, W/8)
    y = tok.decode(codes)     # -> (B, 3, T, H, W)

Causality (as in MAGVIT-v2 / CV-VAE): every 3D convolution pads time on the past side only (with
copies of the first frame), normalisation is per frame, and temporal downsampling is a stride-2
causal convolution, so frame t's codes depend on frames <= t only and the first frame is encoded on
its own: a single image is a one-frame video (T = 1 -> T' = 1). With `temporal_down` = 2 levels,
T = 1 + 4k frames give 1 + k latent frames (temporal compression 4 after the first frame).

`mode: per-frame` wraps an ImageTokenizer (its config in `image`) and codes every frame alone:
codes (B, T, H/f, W/f). `VideoTokenizer.from_image_tokenizer(dir)` builds one from a trained image
tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unitok.errors import ConfigError
from unitok.tokenizers.base import NeuralTokenizer
from unitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, image_preset
from unitok.tokenizers.quantizers import Quantizer, QuantizerConfig

__all__ = ["VideoTokenizerConfig", "VideoTokenizer", "video_preset", "VIDEO_PRESETS", "CausalConv3d"]


@dataclass
class VideoTokenizerConfig:
    mode: Literal["vq3d", "per-frame"] = "vq3d"
    ch: int = 64
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])  # spatial factor 2**(len-1)
    temporal_down: int = 2  # levels (the first ones) that also halve time: compression 2**temporal_down
    num_res_blocks: int = 1
    norm_groups: int = 8
    z_channels: int = 64
    embed_dim: int = 64
    quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(codebook_size=1024, codebook_dim=8))
    image: ImageTokenizerConfig | None = None  # per-frame mode only

    def __post_init__(self):
        if self.mode == "per-frame" and self.image is None:
            raise ValueError("mode 'per-frame' needs an 'image' tokenizer config")
        if self.temporal_down > len(self.ch_mult) - 1:
            raise ValueError(f"temporal_down {self.temporal_down} exceeds the {len(self.ch_mult) - 1} downsampling levels")
        if any(self.ch * m % self.norm_groups for m in self.ch_mult):
            raise ValueError(f"ch * ch_mult must be multiples of norm_groups={self.norm_groups}")

    @property
    def downsample(self) -> int:
        return self.image.downsample if self.mode == "per-frame" else 2 ** (len(self.ch_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 1 if self.mode == "per-frame" else 2 ** self.temporal_down


VIDEO_PRESETS = {
    "debug": lambda: VideoTokenizerConfig(ch=16, ch_mult=[1, 2, 2], temporal_down=2, norm_groups=4, z_channels=16,
                                          embed_dim=16, quantizer=QuantizerConfig(codebook_size=64, codebook_dim=4)),
    "f8t4": lambda: VideoTokenizerConfig(),
    "f16t4": lambda: VideoTokenizerConfig(ch=64, ch_mult=[1, 2, 2, 4, 4], quantizer=QuantizerConfig(
        codebook_size=8192, codebook_dim=8)),
    "per-frame-f8": lambda: VideoTokenizerConfig(mode="per-frame", image=image_preset("f8-cpu")),
    "per-frame-debug": lambda: VideoTokenizerConfig(mode="per-frame", image=image_preset("debug")),
}


def video_preset(name: str) -> VideoTokenizerConfig:
    if name not in VIDEO_PRESETS:
        raise ConfigError(f"unknown video preset {name!r}; known: {', '.join(VIDEO_PRESETS)}")
    return VIDEO_PRESETS[name]()


class CausalConv3d(nn.Module):
    """3x3x3 convolution whose output at time t sees inputs at t-2..t only (past padded with frame 0)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, padding=0)

    def forward(self, x):  # (B, C, T, H, W)
        p = self.k // 2
        if self.stride[1] == 2:  # asymmetric spatial padding for stride 2 (as taming's Downsample)
            x = F.pad(x, (0, 1, 0, 1, 0, 0))
        else:
            x = F.pad(x, (p, p, p, p, 0, 0))
        x = torch.cat([x[:, :, :1].expand(-1, -1, self.k - 1, -1, -1), x], dim=2)  # causal time padding
        return self.conv(x)


class FrameNorm(nn.GroupNorm):
    """GroupNorm applied to every frame on its own (statistics never mix time steps)."""

    def forward(self, x):  # (B, C, T, H, W)
        B, C, T, H, W = x.shape
        y = super().forward(x.transpose(1, 2).reshape(B * T, C, H, W))
        return y.reshape(B, T, C, H, W).transpose(1, 2)


class ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, g: int):
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(g, cin, eps=1e-6), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = FrameNorm(g, cout, eps=1e-6), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder3d(nn.Module):
    def __init__(self, c: VideoTokenizerConfig):
        super().__init__()
        g, ch = c.norm_groups, c.ch
        self.conv_in = CausalConv3d(3, ch)
        layers, cin = [], ch
        for i, m in enumerate(c.ch_mult):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock3d(cin, ch * m, g))
                cin = ch * m
            if i != len(c.ch_mult) - 1:
                layers.append(CausalConv3d(cin, cin, stride=(2 if i < c.temporal_down else 1, 2, 2)))
        layers += [ResBlock3d(cin, cin, g), ResBlock3d(cin, cin, g)]
        self.layers = nn.Sequential(*layers)
        self.norm_out, self.conv_out = FrameNorm(g, cin, eps=1e-6), CausalConv3d(cin, c.z_channels)

    def forward(self, x):  # (B, 3, T, H, W) -> (B, z, T', H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(self.layers(self.conv_in(x)))))


class Upsample3d(nn.Module):
    """Nearest x2 in space and (optionally) time; time T -> 2T - 1 so frame 0 stays a single frame."""

    def __init__(self, c: int, temporal: bool):
        super().__init__()
        self.temporal, self.conv = temporal, CausalConv3d(c, c)

    def forward(self, x):
        if self.temporal:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x)


class Decoder3d(nn.Module):
    def __init__(self, c: VideoTokenizerConfig):
        super().__init__()
        g, ch, mult = c.norm_groups, c.ch, c.ch_mult
        cin = ch * mult[-1]
        layers = [CausalConv3d(c.z_channels, cin), ResBlock3d(cin, cin, g), ResBlock3d(cin, cin, g)]
        for i in reversed(range(len(mult))):
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResBlock3d(cin, ch * mult[i], g))
                cin = ch * mult[i]
            if i != 0:
                layers.append(Upsample3d(cin, temporal=(i - 1) < c.temporal_down))
        self.layers = nn.Sequential(*layers)
        self.norm_out, self.conv_out = FrameNorm(g, cin, eps=1e-6), CausalConv3d(cin, 3)

    def forward(self, z):
        return self.conv_out(F.silu(self.norm_out(self.layers(z))))


class VideoTokenizer(NeuralTokenizer):
    type_name = "video-vq3d"
    modality = "video"
    config_class = VideoTokenizerConfig

    def __init__(self, config: VideoTokenizerConfig):
        super().__init__(config)
        if config.mode == "per-frame":
            self.image = ImageTokenizer(config.image)
            self.bench_frames = 8
        else:
            self.encoder, self.decoder = Encoder3d(config), Decoder3d(config)
            self.quant_conv = nn.Conv3d(config.z_channels, config.embed_dim, 1)
            self.post_quant_conv = nn.Conv3d(config.embed_dim, config.z_channels, 1)
            self.quantize = Quantizer(config.quantizer, config.embed_dim)
            self.bench_frames = 1 + 4 * config.temporal_factor

    @classmethod
    def from_image_tokenizer(cls, directory: str | Path) -> "VideoTokenizer":
        img = ImageTokenizer.from_pretrained(directory)
        tok = cls(VideoTokenizerConfig(mode="per-frame", image=img.config))
        tok.image.load_state_dict(img.state_dict())
        return tok.eval()

    @property
    def qcfg(self) -> QuantizerConfig:
        return self.config.image.quantizer if self.config.mode == "per-frame" else self.config.quantizer

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.qcfg.size] * self.qcfg.num_levels

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.config.temporal_factor

    def num_tokens(self, frames: int, height: int = 256, width: int = 256) -> int:
        """Tokens `encode` writes for one clip of `frames` (1 + k * temporal_factor) frames."""
        f = self.downsample
        t = frames if self.config.mode == "per-frame" else self.latent_frames(frames)
        return t * (height // f) * (width // f) * self.num_levels

    def tokens_per_second(self, fps: float, height: int = 256, width: int = 256) -> float:
        """Tokens per second of height x width video at `fps` (latent frames at fps / temporal factor)."""
        tf = 1 if self.config.mode == "per-frame" else self.config.temporal_factor
        return fps / tf * (height // self.downsample) * (width // self.downsample) * self.num_levels

    def _check(self, x):
        f, tf = self.downsample, self.config.temporal_factor
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"expected videos (B, 3, T, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"frame size {tuple(x.shape[-2:])} must be a multiple of {f}")
        if (x.shape[2] - 1) % tf:
            raise ValueError(f"{x.shape[2]} frames: need 1 + {tf}k frames for temporal compression {tf}")

    def forward(self, x):
        """x (B, 3, T, H, W) -> (reconstruction, QuantOut)."""
        if self.config.mode == "per-frame":
            self._check(x)
            B, _, T, H, W = x.shape
            rec, q = self.image(x.transpose(1, 2).flatten(0, 1))
            return rec.reshape(B, T, 3, H, W).transpose(1, 2), q
        z = self.latents(x)  # (B, E, T', h, w)
        B, E, T, h, w = z.shape
        q = self.quantize(z.flatten(2).transpose(1, 2))
        zq = q.quantized.to(z.dtype).transpose(1, 2).reshape(B, E, T, h, w)
        return self.decode_latents(zq), q

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, T', H/f, W/f) (or (B, L, T', h, w) for residual VQ)."""
        return self.quantize_latents(self.latents(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T', h, w) -> (B, 3, T, h*f, w*f), T = 1 + temporal_factor * (T' - 1)."""
        return self.decode_latents(self.dequantize(codes))

    # Latents are (B, E, T', h, w) in both modes (per-frame: T' = T, each frame's image latent), so
    # a latent frame sits where its codes' frame sits; codes are (B, T', h, w) or (B, L, T', h, w).
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> z (B, E, T', H/f, W/f), the quantizer's input (gradients kept)."""
        self._check(x)
        if self.config.mode == "per-frame":
            return _per_frame(self.image.latents, x)
        return self.quant_conv(self.encoder(x))

    @torch.no_grad()
    def quantize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, E, T', h, w) -> the codes `encode` gives."""
        if self.config.mode == "per-frame":
            return _per_frame(self.image.quantize_latents, z)
        B, E, T, h, w = z.shape
        idx = self.quantize(z.flatten(2).transpose(1, 2)).indices
        if idx.dim() == 3:
            return idx.transpose(1, 2).reshape(B, -1, T, h, w)
        return idx.reshape(B, T, h, w)

    @torch.no_grad()
    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T', h, w) or (B, L, T', h, w) -> z_q (B, E, T', h, w)."""
        codes = codes.long()
        if self.config.mode == "per-frame":
            return _per_frame(self.image.dequantize, codes)
        if codes.dim() == 5:
            B, L, T, h, w = codes.shape
            flat = codes.flatten(2).transpose(1, 2)
        else:
            B, T, h, w = codes.shape
            flat = codes.reshape(B, -1)
        zq = self.quantize.indices_to_codes(flat).transpose(1, 2).reshape(B, -1, T, h, w)
        return zq.to(self.post_quant_conv.weight.dtype)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, E, T', h, w), quantized or continuous -> (B, 3, T, h*f, w*f) (gradients kept)."""
        if self.config.mode == "per-frame":
            return _per_frame(self.image.decode_latents, z)
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))

    def last_layer(self) -> torch.Tensor:
        if self.config.mode == "per-frame":
            return self.image.last_layer()
        return self.decoder.conv_out.conv.weight


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply an image-tokenizer function to every frame: x (B, C, T, ...) or codes (B, T, h, w)
    (a 4-dim tensor has no channel axis) -> fn's output per frame, frames again on axis 2 (axis 1
    for 4-dim single-level codes)."""
    t_axis = 1 if x.dim() == 4 else 2
    B, T = x.shape[0], x.shape[t_axis]
    y = fn(x.movedim(t_axis, 1).flatten(0, 1))  # (B*T, ...)
    y = y.unflatten(0, (B, T))  # (B, T, ...)
    return y if y.dim() == 4 else y.movedim(1, 2)
