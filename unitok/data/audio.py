"""Audio I/O and signal helpers (no torchaudio).

    wav, sr = read_audio("clip.flac")                 # (C, N) float32 in [-1, 1]
    wav = to_model_format(wav, sr, 16000, channels=1) # resample + mix/duplicate channels
    y = resample(x, 44100, 16000)                     # windowed-sinc polyphase, any (..., N) tensor
    m = log_mel(x, 16000, n_fft=1024, n_mels=80)      # (..., 80, frames) log10 mel

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3; anything else (e.g. an audio track in
an MP4) falls back to PyAV. Unreadable files raise `DataError` naming the file; `decode_audio`
with `max_seconds` refuses a longer recording from its header, before decoding it.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unitok.data.media import AUDIO_EXTS, list_media
from unitok.errors import DataError

__all__ = ["AUDIO_EXTENSIONS", "MIN_AUDIO_SECONDS", "check_duration", "list_audio_files", "read_audio", "to_model_format", "resample",
           "mel_filterbank", "mel_spectrogram", "log_mel", "write_wav"]

AUDIO_EXTENSIONS = tuple(sorted(AUDIO_EXTS))


def list_audio_files(folder: str | Path) -> list[Path]:
    """Audio files under `folder` (recursive, sorted; hidden files skipped). Raises DataError if none."""
    files = list_media(folder, "audio")
    if not files:
        raise DataError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode a whole file -> ((C, N) float32, sample rate). DataError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    return decode_audio(str(path), str(path))


def decode_audio(src, name: str, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    """read_audio for a path or a file object (e.g. a tar member held in memory). A recording longer
    than `max_seconds` is refused from its header before decoding, and decoding stops at the limit
    when the header understates the length."""
    try:
        import soundfile as sf

        with sf.SoundFile(src) as f:
            sr = f.samplerate
            _refuse_longer(f.frames / sr, max_seconds, name)
            limit = -1 if max_seconds is None else int(max_seconds * sr) + 1  # -1: all
            data = f.read(limit, dtype="float32", always_2d=True)  # (N, C)
        wav = torch.from_numpy(np.ascontiguousarray(data.T))
    except DataError:
        raise
    except Exception:
        if hasattr(src, "seek"):
            src.seek(0)
        wav, sr = _read_av(src, name, max_seconds)
    if wav.numel() == 0:
        raise DataError(f"{name}: no audio samples")
    if max_seconds is not None and wav.shape[-1] > max_seconds * sr:
        raise DataError(f"{name}: recording of more than {max_seconds:g} s > max_recording_seconds "
                        "(stopped decoding at the limit)")
    if not torch.isfinite(wav).all():
        raise DataError(f"{name}: audio contains NaN or Inf")
    return wav, int(sr)


def _refuse_longer(seconds: float | None, max_seconds: float | None, name: str) -> None:
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise DataError(f"{name}: recording of {seconds:,.0f} s > max_recording_seconds {max_seconds:g} "
                        "(refused before decoding)")


def _read_av(src, path, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    try:
        import av

        with av.open(src) as box:
            stream = next(s for s in box.streams if s.type == "audio")
            sr = stream.rate
            _refuse_longer(float(stream.duration * stream.time_base) if stream.duration
                           else box.duration / 1e6 if box.duration else None, max_seconds, path)  # microseconds
            chunks, n = [], 0
            resampler = av.AudioResampler(format="fltp")
            for frame in box.decode(stream):
                for f in resampler.resample(frame):
                    chunks.append(f.to_ndarray())  # (C, n) planar float
                    n += chunks[-1].shape[-1]
                if max_seconds is not None and n > max_seconds * sr:
                    break  # decode_audio refuses it
        if not chunks:
            raise ValueError("no audio frames")
        return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), int(sr)
    except StopIteration:
        raise DataError(f"{path}: no audio stream") from None
    except DataError:
        raise
    except Exception as e:  # av.error.*, ValueError, OSError
        raise DataError(f"{path}: unreadable audio ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


MIN_AUDIO_SECONDS = 0.1  # shorter audio is skipped by the benchmark and pretokenization


def check_duration(num_samples: int, sr: int, min_seconds: float = MIN_AUDIO_SECONDS) -> None:
    """DataError for audio shorter than `min_seconds` (a user mistake, not a crash)."""
    if num_samples < min_seconds * sr:
        raise DataError(f"too short ({num_samples / sr * 1000:.0f} ms; at least {min_seconds * 1000:.0f} ms)")


def to_model_format(wav: torch.Tensor, sr: int, target_sr: int, channels: int) -> torch.Tensor:
    """(C, N) at `sr` -> (channels, N') at `target_sr`: mono is the channel mean; mono is
    duplicated for stereo models; more channels than asked are mixed down by averaging."""
    if wav.shape[0] != channels:
        if channels == 1:
            wav = wav.mean(0, keepdim=True)
        elif wav.shape[0] == 1:
            wav = wav.expand(channels, -1)
        else:
            wav = wav.mean(0, keepdim=True).expand(channels, -1)
    return resample(wav.contiguous(), sr, target_sr)


@lru_cache(maxsize=32)
def _sinc_kernels(orig: int, new: int, zeros: int, rolloff: float) -> tuple[torch.Tensor, int]:
    # One low-pass windowed-sinc filter per output phase (polyphase): kernel j evaluates the
    # band-limited input at time j*orig/new (in input samples) from 2*width+1 neighbours.
    width = math.ceil(zeros * orig / (min(orig, new) * rolloff))
    t = torch.arange(-width, width + orig, dtype=torch.float64)[None, :]  # (1, K)
    phase = (torch.arange(new, dtype=torch.float64) * orig / new)[:, None]  # (new, 1)
    x = (t - phase) / orig * min(orig, new) * rolloff  # time in units of the output band's zeros
    window = torch.where(x.abs() <= zeros, torch.cos(x / zeros * math.pi / 2) ** 2, torch.zeros_like(x))  # Hann
    k = torch.sinc(x) * window * (min(orig, new) / orig) * rolloff
    return k.float(), width  # (new, 2*width+orig)


def resample(x: torch.Tensor, orig_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945) -> torch.Tensor:
    """Band-limited resampling of (..., N) along the last axis with a Hann-windowed sinc
    (`zeros` zero crossings each side, cutoff `rolloff` x the lower Nyquist), computed as a
    polyphase strided convolution. Output length is ceil(N * new_sr / orig_sr)."""
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernels, width = _sinc_kernels(orig, new, zeros, rolloff)
    shape = x.shape
    n = shape[-1]
    y = x.reshape(-1, 1, n)
    y = F.pad(y, (width, width + orig))
    out = F.conv1d(y, kernels.to(y)[:, None, :], stride=orig)  # (B, new, frames)
    out = out.transpose(1, 2).reshape(y.shape[0], -1)  # interleave phases
    target = -(-n * new // orig)
    return out[:, :target].reshape(*shape[:-1], target)


@lru_cache(maxsize=16)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft//2+1) triangular filters on the HTK mel scale, each normalised to unit area
    (Slaney normalisation)."""
    fmax = fmax or sr / 2
    hz2mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel2hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    fb = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(fb.astype(np.float32))


def _stft_mag(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    shape = x.shape
    window = torch.hann_window(n_fft, device=x.device, dtype=torch.float32)
    spec = torch.stft(x.reshape(-1, shape[-1]).float(), n_fft, hop, window=window, return_complex=True, center=True)
    return spec.abs().reshape(*shape[:-1], *spec.shape[-2:])  # (..., F, frames)


def mel_spectrogram(x: torch.Tensor, sr: int, n_fft: int = 1024, hop: int | None = None, n_mels: int = 80,
                    power: float = 1.0) -> torch.Tensor:
    """(..., N) -> (..., n_mels, frames) mel magnitude (power 1) or energy (power 2)."""
    mag = _stft_mag(x, n_fft, hop or n_fft // 4) ** power
    return torch.matmul(mel_filterbank(sr, n_fft, n_mels).to(mag), mag)


def log_mel(x: torch.Tensor, sr: int, n_fft: int = 1024, hop: int | None = None, n_mels: int = 80,
            floor: float = 1e-5) -> torch.Tensor:
    """log10 of the mel magnitude spectrogram, floored at `floor`: (..., n_mels, frames)."""
    return torch.log10(mel_spectrogram(x, sr, n_fft, hop, n_mels).clamp_min(floor))


def write_wav(path: str | Path, wav: torch.Tensor, sr: int) -> None:
    """(C, N) float -> 16-bit PCM WAV."""
    import soundfile as sf

    sf.write(str(path), wav.detach().clamp(-1, 1).t().cpu().numpy(), sr, subtype="PCM_16")


class AudioClips:
    """A folder of audio files decoded once to the model format, for random training segments.

        clips = AudioClips("data/audio", sample_rate=16000, channels=1)
        batch = clips.sample(8, 16000, generator)   # (8, 1, 16000)

    Unreadable files (`skipped_unreadable`) and silent ones (`skipped_silent`, peak below
    `silence`) are skipped, counted and named in `skipped`. Everything is held in memory as
    float32 at the model rate (one hour of 16 kHz mono is 230 MB).
    """

    def __init__(self, folder: str | Path, sample_rate: int, channels: int, silence: float = 1e-4,
                 progress: bool = True):
        from tqdm import tqdm

        self.files = list_audio_files(folder)
        self.sample_rate, self.channels = sample_rate, channels
        self.clips: list[torch.Tensor] = []
        self.names: list[str] = []
        self.skipped: dict[str, str] = {}
        for p in tqdm(self.files, desc="reading audio", disable=not progress or not sys.stderr.isatty(), leave=False):
            try:
                wav, sr = read_audio(p)
            except DataError as e:
                self.skipped[p.name] = f"unreadable: {e}"
                continue
            if wav.abs().max() < silence:
                self.skipped[p.name] = "silent"
                continue
            self.clips.append(to_model_format(wav, sr, sample_rate, channels).contiguous())
            self.names.append(p.name)
        self.skipped_unreadable = sum(v.startswith("unreadable") for v in self.skipped.values())
        self.skipped_silent = sum(v == "silent" for v in self.skipped.values())
        if not self.clips:
            raise DataError(f"{folder}: no readable, non-silent audio files ({len(self.skipped)} skipped)")
        self.lengths = torch.tensor([c.shape[-1] for c in self.clips], dtype=torch.float64)

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / self.sample_rate

    def sample(self, batch: int, length: int, generator: torch.Generator | None = None,
               min_rms: float = 1e-3, tries: int = 8, weighting: str = "length") -> torch.Tensor:
        """(batch, channels, length) random segments, files drawn in proportion to their length
        (`weighting="length"`) or equally often (`"file"`); near-silent segments are redrawn up to
        `tries` times; short files are zero-padded."""
        out = torch.zeros(batch, self.channels, length)
        weights = self.lengths if weighting == "length" else torch.ones_like(self.lengths)
        for b in range(batch):
            for _ in range(tries):
                i = int(torch.multinomial(weights, 1, generator=generator))
                clip = self.clips[i]
                start = int(torch.randint(0, max(1, clip.shape[-1] - length + 1), (1,), generator=generator))
                seg = clip[:, start: start + length]
                if seg.pow(2).mean().sqrt() >= min_rms:
                    break
            out[b, :, : seg.shape[-1]] = seg
        return out
