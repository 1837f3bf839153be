"""EnCodec audio tokenizer: SEANet encoder/decoder + residual VQ.

    tok = AudioTokenizer(AudioTokenizerConfig.tiny())           # or load_tokenizer(dir)
    codes = tok.encode(wav, bandwidth=3.0)   # wav (B, C, N) at tok.sample_rate -> (B, L, T') int64
    wav2 = tok.decode(codes, length=N)       # (B, C, N)
    tok.codebook_sizes                        # [K] * levels

The encoder/decoder are transformers' `EncodecEncoder`/`EncodecDecoder` (the SEANet
of Défossez et al. 2022, "High Fidelity Neural Audio Compression"); the quantizer is
vector-quantize-pytorch's `ResidualVQ` (EMA codebooks, k-means init, dead-code expiry,
commitment loss), because transformers' quantizer is an inference-only buffer codebook
that passes no gradient to the encoder.

T' = ceil(N / hop) with hop = prod(upsampling_ratios); L = levels in use, chosen at encode
time from a bandwidth in kbps: L = floor(bandwidth * 1000 / (frame_rate * log2(K))).

Official weights load from a local folder in the transformers format
(`AudioTokenizer.from_hf`, e.g. facebook/encodec_24khz, facebook/encodec_48khz) or from an
original `.th` checkpoint of the encodec package (`AudioTokenizer.from_encodec_checkpoint`).
The 48 kHz model normalises each 1 s chunk by its RMS: `encode(..., return_scales=True)`
returns the scales that `decode(codes, scales=...)` needs.

Latents (the diffusion head's target): `latents(wav)` (B, D, T') is what the RVQ receives (after
the latent BatchNorm and companding), one D-dim frame per code frame: the L level positions of a
frame share it. `quantize_latents(z, levels)` == `encode`, `dequantize(codes)` (B, D, T') is the
sum of the levels' code vectors, and `decode_latents(z, length, scales)` undoes the companding and
runs the decoder (chunk by chunk for chunked models). RMS scales are kept in neither the codes nor
the latents: both describe the normalised clip, `latents(..., return_scales=True)` returns them
as `encode` does, and `decode_latents` takes them as `decode` does (None: unit RMS, so generated
audio comes out at the normalised level).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unitok.config import from_dict
from unitok.errors import CheckpointError, ConfigError, read_json
from unitok.foreign import load_torch_file, state_dict_from
from unitok.tokenizers.base import NeuralTokenizer
from unitok.tokenizers.quantizers import kmeans

__all__ = ["AudioTokenizerConfig", "AudioTokenizer", "hf_to_encodec_state_dict", "encodec_to_hf_state_dict"]


@dataclass
class AudioTokenizerConfig:
    """Architecture of an EnCodec tokenizer (the fields of transformers' EncodecConfig plus the RVQ)."""

    sample_rate: int = 16000
    channels: int = 1  # 1 mono, 2 stereo
    # SEANet
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])  # decoder order; encoder reverses
    hidden_size: int = 128  # latent / codebook dimension
    num_lstm_layers: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    causal: bool = True
    pad_mode: str = "reflect"
    norm_type: Literal["weight_norm", "time_group_norm"] = "weight_norm"
    use_conv_shortcut: bool = True
    # input normalisation and chunking (official 48 kHz model: true, 1.0, 0.01)
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None
    # latent normalisation: a non-affine BatchNorm after the encoder. transformers' SEANet output
    # barely varies at initialisation, which collapses the RVQ to a few codes; this fixes it.
    latent_norm: bool = True
    # radial asinh companding of each latent frame before the RVQ: norm r -> s*asinh(r/s) (the
    # decoder gets the inverse). Latent norms span ~40 dB between quiet and loud frames; without it
    # the first levels spend their codes on loud frames and send every quiet one to the same code.
    latent_compand: float | None = None
    # residual VQ
    # (the names of unitok.tokenizers.quantizers.QuantizerConfig, shared with image and video)
    codebook_size: int = 1024
    levels: int = 8
    decay: float = 0.99  # EMA decay of the codebooks
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.1  # an EMA hit count; keep well below tokens-per-step / codebook_size
    commitment_weight: float = 0.1
    quantize_dropout: bool = True  # train with a random number of levels (bandwidth dropout)

    def __post_init__(self):
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size must be a power of two, got {self.codebook_size}")
        if self.levels < 1:
            raise ValueError("levels must be >= 1")
        if self.latent_compand is not None and self.latent_compand <= 0:
            raise ValueError(f"latent_compand must be positive (or null for off), got {self.latent_compand}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_level(self) -> int:
        return int(math.log2(self.codebook_size))

    @property
    def kbps_per_level(self) -> float:
        return self.frame_rate * self.bits_per_level / 1000

    # --- named presets -------------------------------------------------------------------
    @classmethod
    def tiny(cls, **kw) -> "AudioTokenizerConfig":
        """Debug model for tests: 37k parameters, 16 kHz, hop 64, 4 levels of 64 codes."""
        base = dict(num_filters=4, upsampling_ratios=[4, 4, 4], hidden_size=16, num_lstm_layers=1,
                    codebook_size=64, levels=4, kmeans_init=False)
        return cls(**{**base, **kw})

    @classmethod
    def small_16k(cls, **kw) -> "AudioTokenizerConfig":
        """CPU-trainable 16 kHz codec (tokenizers/audio-encodec-16k): 0.73M parameters, 50 Hz frames,
        24 levels x 32 codes = 6.0 kbps, companded latents."""
        base = dict(num_filters=8, upsampling_ratios=[8, 5, 4, 2], hidden_size=64, num_lstm_layers=1,
                    codebook_size=32, levels=24, latent_compand=0.25, decay=0.95,
                    dead_code_threshold=0.25, quantize_dropout=False)
        return cls(**{**base, **kw})

    @classmethod
    def encodec_24khz(cls, **kw) -> "AudioTokenizerConfig":
        """Architecture of facebook/encodec_24khz (75 Hz, 32 levels x 1024 codes, 1.5-24 kbps)."""
        base = dict(sample_rate=24000, channels=1, upsampling_ratios=[8, 5, 4, 2], latent_norm=False,
                    codebook_size=1024, levels=32, kmeans_init=False, quantize_dropout=False)
        return cls(**{**base, **kw})

    @classmethod
    def encodec_48khz(cls, **kw) -> "AudioTokenizerConfig":
        """Architecture of facebook/encodec_48khz (stereo, 150 Hz, 16 levels x 1024 codes, 3-24 kbps)."""
        base = dict(sample_rate=48000, channels=2, upsampling_ratios=[8, 5, 4, 2], latent_norm=False,
                    causal=False, norm_type="time_group_norm", normalize=True, chunk_length_s=1.0, overlap=0.01,
                    codebook_size=1024, levels=16, kmeans_init=False, quantize_dropout=False)
        return cls(**{**base, **kw})


def _hf_config(cfg: AudioTokenizerConfig):
    from transformers import EncodecConfig

    return EncodecConfig(
        sampling_rate=cfg.sample_rate, audio_channels=cfg.channels, hidden_size=cfg.hidden_size,
        num_filters=cfg.num_filters, num_residual_layers=cfg.num_residual_layers,
        upsampling_ratios=list(cfg.upsampling_ratios), norm_type=cfg.norm_type, kernel_size=cfg.kernel_size,
        last_kernel_size=cfg.last_kernel_size, residual_kernel_size=cfg.residual_kernel_size,
        dilation_growth_rate=cfg.dilation_growth_rate, use_causal_conv=cfg.causal, pad_mode=cfg.pad_mode,
        compress=cfg.compress, num_lstm_layers=cfg.num_lstm_layers, codebook_size=cfg.codebook_size,
        use_conv_shortcut=cfg.use_conv_shortcut, normalize=cfg.normalize, chunk_length_s=cfg.chunk_length_s,
        overlap=cfg.overlap,
    )


class AudioTokenizer(NeuralTokenizer):
    """EnCodec: wav (B, C, N) <-> codes (B, L, T')."""

    type_name = "audio-encodec"
    renamed_keys = {"num_levels": "levels", "ema_decay": "decay", "threshold_ema_dead_code": "dead_code_threshold"}
    modality = "audio"
    config_class = AudioTokenizerConfig

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__(config)
        from transformers.models.encodec.modeling_encodec import EncodecDecoder, EncodecEncoder
        from vector_quantize_pytorch import ResidualVQ

        hf = _hf_config(config)
        self.encoder = EncodecEncoder(hf)
        self.decoder = EncodecDecoder(hf)
        self.latent_norm = nn.BatchNorm1d(config.hidden_size, affine=False, momentum=0.1) if config.latent_norm else None
        self.quantizer = ResidualVQ(
            dim=config.hidden_size, num_quantizers=config.levels, codebook_size=config.codebook_size,
            decay=config.decay, kmeans_init=config.kmeans_init, kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.dead_code_threshold, commitment_weight=config.commitment_weight,
            quantize_dropout=config.quantize_dropout, rotation_trick=False,
        )

    # --- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.config.codebook_size] * self.config.levels

    @property
    def bandwidths(self) -> list[float]:
        """kbps for 1..levels levels."""
        return [round(i * self.config.kbps_per_level, 4) for i in range(1, self.config.levels + 1)]

    def levels_for_bandwidth(self, bandwidth: float | None) -> int:
        """Levels in use for a bandwidth in kbps (None: all levels)."""
        if bandwidth is None:
            return self.config.levels
        n = int(math.floor(bandwidth / self.config.kbps_per_level + 1e-6))
        if n < 1:
            raise ConfigError(f"bandwidth {bandwidth} kbps is below one level ({self.config.kbps_per_level:g} kbps)")
        return min(n, self.config.levels)

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.hop_length)

    def num_tokens(self, num_samples: int) -> int:
        """Tokens `encode` writes for `num_samples` samples (frames x levels)."""
        return self.num_frames(num_samples) * self.config.levels

    @property
    def tokens_per_second(self) -> float:
        return self.frame_rate * self.config.levels

    # --- latent path ----------------------------------------------------------------------------
    def _check_wav(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 2:
            wav = wav[None]
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"expected wav of shape (B, {self.channels}, N), got {tuple(wav.shape)}")
        return wav.float()

    def _scale(self, wav: torch.Tensor) -> torch.Tensor | None:
        if not self.config.normalize:
            return None
        return wav.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8  # (B, 1, 1)

    def _encode_chunk(self, wav: torch.Tensor) -> torch.Tensor:
        """One chunk, already divided by its RMS scale: wav (B, C, N) -> latent (B, D, T') in the
        quantizer's space (normalised when latent_norm is on, companded when latent_compand is set)."""
        z = self.encoder(wav)
        if self.latent_norm is not None:
            z = self.latent_norm(z)
        s = self.config.latent_compand
        if s:
            r = z.norm(dim=1, keepdim=True).clamp_min(1e-6)
            z = z * (s * torch.asinh(r / s) / r)
        return z

    def _uncompand(self, q: torch.Tensor) -> torch.Tensor:
        """A latent (B, D, T') in the quantizer's space -> decoder input: undoes the companding (if any)."""
        s = self.config.latent_compand
        if not s:
            return q
        r = q.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return q * (s * torch.sinh((r / s).clamp_max(12.0)) / r)

    @torch.no_grad()
    def calibrate_latent_norm(self, batches) -> None:
        """Set the latent BatchNorm's running statistics to the plain average over `batches`
        (an iterable of wav (B, C, N)) under the current encoder, so eval-mode codes match what
        the codebooks were trained on. The trainer calls this before saving."""
        if self.latent_norm is None:
            return
        bn = self.latent_norm
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        was_training = self.training
        self.eval()
        bn.train()
        for wav in batches:
            wav = self._check_wav(wav.to(bn.running_mean.device))
            scale = self._scale(wav)
            self._encode_chunk(wav / scale if scale is not None else wav)
        bn.momentum = 0.1
        self.train(was_training)

    @torch.no_grad()
    def refit_codebooks(self, batches, iters: int = 20) -> list[float]:
        """Refit every RVQ codebook by residual k-means on the latents of `batches` (iterable
        of wav (B, C, N)) under the current encoder; returns each level's usage (fraction of
        codes with at least one vector). EMA state is reset to the fit."""
        was_training = self.training
        self.eval()
        zs = []
        for wav in batches:
            wav = self._check_wav(wav.to(self.quantizer.codebooks.device))
            scale = self._scale(wav)
            z = self._encode_chunk(wav / scale if scale is not None else wav)  # (B, D, T')
            zs.append(z.transpose(1, 2).reshape(-1, z.shape[1]).float())
        residual = torch.cat(zs)  # (M, D)
        usage = []
        for layer in self.quantizer.layers:
            cb = layer._codebook
            k = cb.embed.shape[-2]
            embed, counts = kmeans(residual, k, iters)
            cb.embed.data.copy_(embed[None])
            cb.embed_avg.data.copy_((embed * counts[:, None].clamp_min(1e-3))[None])
            cb.cluster_size.data.copy_(counts.clamp_min(1e-3)[None])
            cb.initted.data.fill_(True)
            usage.append(float((counts > 0).float().mean()))
            idx = torch.cdist(residual, embed).argmin(-1)
            residual = residual - embed[idx]
        self.train(was_training)
        return usage

    def forward(self, wav: torch.Tensor):
        """Training pass: wav (B, C, N) -> (reconstruction (B, C, N), codes (B, L, T'), commitment loss)."""
        wav = self._check_wav(wav)
        scale = self._scale(wav)
        x = wav / scale if scale is not None else wav
        z = self._encode_chunk(x)  # (B, D, T')
        q, idx, commit = self.quantizer(z.transpose(1, 2))  # (B, T', D), (B, T', L), (L,)
        y = self.decoder(self._uncompand(q.transpose(1, 2)))[..., : wav.shape[-1]]
        if scale is not None:
            y = y * scale
        return y, idx.transpose(1, 2), commit.sum()

    def _quantize(self, z: torch.Tensor, levels: int) -> torch.Tensor:
        """Nearest-code residual quantisation of z (B, D, T') with the first `levels` codebooks -> (B, L, T')."""
        residual = z.transpose(1, 2).float()  # (B, T', D)
        codebooks = self.quantizer.codebooks  # (Lmax, K, D)
        out = []
        for level in range(levels):
            e = codebooks[level].float()  # (K, D)
            # same expression as the official codec: argmax of -(|x|^2 - 2 x.e + |e|^2)
            dist = -(residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ e.t() + e.pow(2).sum(-1))
            idx = dist.argmax(-1)  # (B, T')
            residual = residual - F.embedding(idx, e)
            out.append(idx)
        return torch.stack(out, 1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, L, T') -> quantised latent (B, D, T') (sum of the first L levels' code vectors)."""
        codebooks = self.quantizer.codebooks
        if codes.shape[1] > codebooks.shape[0]:
            raise ValueError(f"codes have {codes.shape[1]} levels; this tokenizer has {codebooks.shape[0]}")
        q = sum(F.embedding(codes[:, i].long(), codebooks[i]) for i in range(codes.shape[1]))  # (B, T', D)
        return q.transpose(1, 2)

    # --- chunking (official 48 kHz model) -----------------------------------------------------------
    def _chunks(self, n: int) -> tuple[int, int]:
        c = self.config
        if c.chunk_length_s is None:
            return n, n
        length = int(c.chunk_length_s * c.sample_rate)
        stride = max(1, int((1.0 - (c.overlap or 0.0)) * length)) if c.overlap is not None else length
        return length, stride

    # --- public API ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav: torch.Tensor, bandwidth: float | None = None, levels: int | None = None,
               return_scales: bool = False):
        """wav (B, C, N) float at `sample_rate` -> codes (B, L, T') int64.

        `bandwidth` (kbps) or `levels` picks L (default: all levels). Chunked models give the
        chunks' codes one after the other; `return_scales` also returns (B, chunks) RMS scales.
        """
        L = levels if levels is not None else self.levels_for_bandwidth(bandwidth)
        z, scales = self.latents(wav, return_scales=True)
        codes = self.quantize_latents(z, L)
        return (codes, scales) if return_scales else codes

    @torch.no_grad()
    def latents(self, wav: torch.Tensor, return_scales: bool = False):
        """wav (B, C, N) -> z (B, D, T'): each chunk divided by its RMS scale (normalising models),
        encoded, the chunks' frames one after the other; `return_scales` also returns the (B, chunks)
        scales (ones for models that do not normalise)."""
        wav = self._check_wav(wav)
        n = wav.shape[-1]
        length, stride = self._chunks(n)
        zs, scales = [], []
        for off in range(0, n, stride):
            x = wav[..., off: off + length]
            s = self._scale(x)
            zs.append(self._encode_chunk(x / s if s is not None else x))
            scales.append(s.view(-1) if s is not None else torch.ones(wav.shape[0], device=wav.device))
        z = torch.cat(zs, -1)
        return (z, torch.stack(scales, 1)) if return_scales else z

    @torch.no_grad()
    def quantize_latents(self, z: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """z (B, D, T') -> codes (B, L, T') with the first `levels` codebooks (default all), as `encode`."""
        L = self.config.levels if levels is None else levels
        if not 1 <= L <= self.config.levels:
            raise ValueError(f"levels must be in 1..{self.config.levels}, got {L}")
        return self._quantize(z, L)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None, scales: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, L, T') (or (L, T')) -> wav (B, C, length or T' * hop). With autograd on,
        `decode_latents(dequantize(codes), ...)` is the same (the trainer's decoder-only phase)."""
        return self.decode_latents(self.dequantize(codes if codes.dim() == 3 else codes[None]), length, scales)

    def decode_latents(self, z: torch.Tensor, length: int | None = None,
                       scales: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, D, T') in the quantizer's space, quantized or continuous -> wav (B, C, length or
        T' * hop), times `scales` (B, chunks) if given (gradients kept)."""
        if self.config.chunk_length_s is None:
            y = self.decoder(self._uncompand(z))
            if scales is not None:
                y = y * scales[:, :1, None]
        else:
            y = self._decode_chunks(z, scales)
        return y[..., :length] if length is not None else y

    def _decode_chunks(self, z: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        length, stride = self._chunks(0)
        per_chunk = self.num_frames(length)
        frames = []
        for i, off in enumerate(range(0, z.shape[-1], per_chunk)):
            y = self.decoder(self._uncompand(z[..., off: off + per_chunk]))
            if scales is not None:
                y = y * scales[:, i, None, None]
            frames.append(y)
        # overlap-add with triangular weights peaking mid-chunk (as the official codec)
        total = stride * (len(frames) - 1) + frames[-1].shape[-1]
        t = torch.linspace(0, 1, frames[0].shape[-1] + 2, device=z.device)[1:-1]
        weight = 0.5 - (t - 0.5).abs()
        out = torch.zeros(*frames[0].shape[:-1], total, device=z.device)
        wsum = torch.zeros(total, device=z.device)
        for i, f in enumerate(frames):
            n = f.shape[-1]
            out[..., i * stride: i * stride + n] += weight[:n] * f
            wsum[i * stride: i * stride + n] += weight[:n]
        return out / wsum

    # --- official weights -----------------------------------------------------------------------
    @classmethod
    def from_hf(cls, directory: str | Path, **overrides) -> "AudioTokenizer":
        """Load a transformers-format EnCodec folder (config.json + model.safetensors or
        pytorch_model.bin), e.g. a local copy of facebook/encodec_24khz or facebook/encodec_48khz."""
        d = Path(directory)
        cpath = d / "config.json"
        if not cpath.is_file():
            raise CheckpointError(f"{d}: no config.json (expected a transformers EnCodec folder)")
        hf = read_json(cpath, "EnCodec config")
        if hf.get("model_type") != "encodec":
            raise CheckpointError(f"{cpath}: model_type is {hf.get('model_type')!r}, not 'encodec'")
        state = _load_state_file(d)
        state = {_fix_weight_norm_key(k): v for k, v in state.items()}
        n_levels = len({k.split(".")[2] for k in state if k.startswith("quantizer.layers.")})
        codebook = state["quantizer.layers.0.codebook.embed"]
        cfg = dict(
            sample_rate=hf.get("sampling_rate", 24000), channels=hf.get("audio_channels", 1),
            num_filters=hf.get("num_filters", 32), num_residual_layers=hf.get("num_residual_layers", 1),
            upsampling_ratios=list(hf.get("upsampling_ratios", [8, 5, 4, 2])), hidden_size=hf.get("hidden_size", 128),
            num_lstm_layers=hf.get("num_lstm_layers", 2), kernel_size=hf.get("kernel_size", 7),
            last_kernel_size=hf.get("last_kernel_size", 7), residual_kernel_size=hf.get("residual_kernel_size", 3),
            dilation_growth_rate=hf.get("dilation_growth_rate", 2), compress=hf.get("compress", 2),
            causal=hf.get("use_causal_conv", True), pad_mode=hf.get("pad_mode", "reflect"),
            norm_type=hf.get("norm_type", "weight_norm"), use_conv_shortcut=hf.get("use_conv_shortcut", True),
            normalize=hf.get("normalize", False), chunk_length_s=hf.get("chunk_length_s"), overlap=hf.get("overlap"),
            latent_norm=False, codebook_size=int(codebook.shape[0]), levels=n_levels, kmeans_init=False,
            quantize_dropout=False,
        )
        if hf.get("trim_right_ratio", 1.0) != 1.0:
            raise CheckpointError(f"{cpath}: trim_right_ratio != 1.0 is not supported")
        cfg.update(overrides)
        model = cls(from_dict(AudioTokenizerConfig, cfg, source=str(cpath)))
        model._load_official(state, str(d))
        return model.eval()

    @classmethod
    def from_encodec_checkpoint(cls, path: str | Path, config: AudioTokenizerConfig | None = None,
                                **overrides) -> "AudioTokenizer":
        """Load an original `.th` checkpoint of the encodec package (a plain state dict, or one under
        'best_state' / 'model' / 'state_dict'; read without executing it, see `unitok.foreign`).

        Architecture sizes are read from the weights; what they cannot tell (sample rate,
        causality, chunking) comes from the 24 kHz preset, or the 48 kHz preset for a stereo
        time-group-norm checkpoint, or from `config` / `overrides`."""
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"encodec checkpoint not found: {p}")
        raw = state_dict_from(load_torch_file(p), p)
        if not any(k.startswith("encoder.model.") for k in raw):
            raise CheckpointError(f"{p}: not an encodec state dict (no 'encoder.model.*' keys)")
        state = encodec_to_hf_state_dict(raw)
        if config is None:
            arch = _infer_arch(state)
            preset = AudioTokenizerConfig.encodec_48khz if (arch["channels"] == 2 and arch["norm_type"] == "time_group_norm") \
                else AudioTokenizerConfig.encodec_24khz
            config = preset(**{**arch, **overrides})
        elif overrides:
            config = replace(config, **overrides)
        model = cls(config)
        model._load_official(state, str(p))
        return model.eval()

    def _load_official(self, state: dict, source: str) -> None:
        """Load a transformers-named EnCodec state dict (encoder/decoder/quantizer.layers.i.codebook.*)."""
        ours = {}
        for k, v in state.items():
            m = re.match(r"quantizer\.layers\.(\d+)\.codebook\.(embed|embed_avg|cluster_size|inited)$", k)
            if m:
                i, name = m.groups()
                prefix = f"quantizer.layers.{i}._codebook."
                if name == "inited":
                    ours[prefix + "initted"] = torch.tensor(True)
                else:
                    ours[prefix + name] = v.float()[None]  # one codebook "head"
            elif k.startswith(("encoder.", "decoder.")):
                ours[k] = v
        own = self.state_dict()
        missing = [k for k in own if k not in ours and not k.startswith("latent_norm.")]
        unexpected = [k for k in ours if k not in own]
        if missing or unexpected:
            raise CheckpointError(f"{source}: weights do not match the EnCodec architecture "
                                  f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})")
        for k, v in ours.items():
            if own[k].shape != v.shape:
                raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict({**own, **ours}, strict=True)


# --- state-dict conversion ---------------------------------------------------------------------

def _fix_weight_norm_key(k: str) -> str:
    # old transformers / torch weight_norm names -> parametrization names
    return k.replace(".weight_g", ".parametrizations.weight.original0").replace(".weight_v", ".parametrizations.weight.original1")


def _load_state_file(d: Path) -> dict:
    st, pt = d / "model.safetensors", d / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
    except Exception as e:
        raise CheckpointError(f"{d}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if pt.is_file():
        return state_dict_from(load_torch_file(pt), pt)
    raise CheckpointError(f"{d}: no model.safetensors or pytorch_model.bin")


# encodec package name  <->  transformers name, applied in order (module paths only).
_ENCODEC_TO_HF = [
    (r"^encoder\.model\.", "encoder.layers."),
    (r"^decoder\.model\.", "decoder.layers."),
    (r"\.conv\.conv\.", ".conv."),
    (r"\.convtr\.convtr\.", ".conv."),
    (r"\.conv\.norm\.", ".norm."),
    (r"\.convtr\.norm\.", ".norm."),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
]


def encodec_to_hf_state_dict(state: dict) -> dict:
    """Original encodec (`.th`) key names -> transformers EncodecModel names."""
    out = {}
    for k, v in state.items():
        new = k
        for pat, rep in _ENCODEC_TO_HF:
            new = re.sub(pat, rep, new)
        out[_fix_weight_norm_key(new)] = v
    return out


def hf_to_encodec_state_dict(state: dict) -> dict:
    """transformers EncodecModel names -> original encodec (`.th`) names (weight_g / weight_v)."""
    out = {}
    for k, v in state.items():
        new = k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v")
        new = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", new)
        m = re.match(r"^(encoder|decoder)\.layers\.(.*)$", new)
        if m:
            part, rest = m.groups()
            # a transposed conv sits at "<i>.conv" of the decoder where the original has ConvTranspose
            is_tr = part == "decoder" and _is_decoder_convtr(rest, state, k)
            inner = "convtr" if is_tr else "conv"
            rest = re.sub(r"(^|\.)conv\.", rf"\1{inner}.{inner}.", rest, count=1)
            rest = re.sub(r"(^|\.)norm\.", rf"\1{inner}.norm.", rest, count=1)
            new = f"{part}.model.{rest}"
        out[new] = v
    return out


def _is_decoder_convtr(rest: str, state: dict, key: str) -> bool:
    # In the decoder, the upsampling layers are the direct children "<i>.conv" whose weight is
    # (in, out, k) with k = 2 * stride; we tell them apart from plain convs by the layer index
    # pattern: a ConvTranspose layer is never inside a residual block ("block"/"shortcut").
    if ".block." in rest or ".shortcut." in rest or ".lstm." in rest:
        return False
    idx = int(rest.split(".")[0])
    return idx in _decoder_convtr_indices(state)


def _decoder_convtr_indices(state: dict) -> set[int]:
    # children indices of the decoder: 0 conv, 1 lstm, then per ratio [ELU, convtr, resblocks...], ELU, conv
    idx = sorted({int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")})
    block_idx = {int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.") and (".block." in k or ".shortcut." in k)}
    lstm_idx = {int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.") and ".lstm." in k}
    plain = [i for i in idx if i not in block_idx and i not in lstm_idx]
    return set(plain[1:-1])  # all but the first and last plain convs


def _infer_arch(state: dict) -> dict:
    """Architecture sizes from a transformers-named EnCodec state dict."""
    def w(key):
        for suffix in (".parametrizations.weight.original1", ".weight"):
            if key + suffix in state:
                return state[key + suffix]
        raise CheckpointError(f"checkpoint lacks {key}.weight")

    first = w("encoder.layers.0.conv")  # (F, C, k)
    enc_idx = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    last = w(f"encoder.layers.{enc_idx[-1]}.conv")  # (D, ., k)
    res_idx = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.") and ".block." in k}
    lstm_keys = [k for k in state if k.startswith("encoder.") and ".lstm.weight_ih_l" in k]
    plain = [i for i in enc_idx if i not in res_idx and not any(k.startswith(f"encoder.layers.{i}.lstm") for k in state)]
    down = plain[1:-1]  # the downsampling convs, in encoder order
    ratios = [int(w(f"encoder.layers.{i}.conv").shape[-1]) // 2 for i in down][::-1]
    n_levels = len({k.split(".")[2] for k in state if k.startswith("quantizer.layers.")})
    codebook = state["quantizer.layers.0.codebook.embed"]
    has_shortcut = any(".shortcut." in k for k in state if k.startswith("encoder."))
    return dict(
        channels=int(first.shape[1]), num_filters=int(first.shape[0]), hidden_size=int(last.shape[0]),
        upsampling_ratios=ratios, num_residual_layers=max(1, len(res_idx) // max(1, len(ratios))),
        num_lstm_layers=len(lstm_keys), kernel_size=int(first.shape[-1]), last_kernel_size=int(last.shape[-1]),
        norm_type="time_group_norm" if any(k.endswith(".norm.weight") for k in state) else "weight_norm",
        use_conv_shortcut=has_shortcut, codebook_size=int(codebook.shape[0]), levels=n_levels,
    )
