"""The audio tokenizer benchmark's classical codecs, scores and usage sweep; its command is
`unitok.apps.bench_audio` (`unitok tokenizer bench` on an audio tokenizer).

* opus: libopus (through PyAV) at a given bitrate, at the lowest Opus rate (8/12/16/24/48 kHz)
  >= the model rate, decoded, resampled back to the model rate and aligned (see `opus_roundtrip`).
* codec2: the 8 kHz speech codec (pycodec2) at one of its rates (0.7-3.2 kbps, `codec2_mode` picks the
  highest at or below a rate); scored full band and band-limited to 0-4 kHz (`mel_distance_4k`).

Metrics (`scores`; all at the model rate, on every channel, averaged):
* SI-SNR (dB): scale-invariant SNR of the reconstruction against the original.
* log-mel distance: mean |log10 mel(y) - log10 mel(x)|, 80 mel bands, n_fft 1024, hop 256,
  magnitudes floored at 1e-5.
* STFT distance: mean |log10 |STFT(y)| - log10 |STFT(x)||, averaged over n_fft 512/1024/2048
  (hop n_fft/4), floored at 1e-5.
* STOI (pystoi, mono mix).
Per group (`by_group`): the same means over the files of one source sampling rate (8 kHz telephone
speech, upsampled to the model rate as the tokenizer's policy does) or one language.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from unitok.bench.image import level_stats
from unitok.data.audio import list_audio_files, read_audio, resample, to_model_format
from unitok.errors import DataError
from unitok.metrics import mel_distance, si_snr, stft_distance

__all__ = ["opus_roundtrip", "align", "scores", "by_group", "least_seen"]

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def align(y: torch.Tensor, x: torch.Tensor, max_lag: int) -> tuple[torch.Tensor, int]:
    """Shift y (C, M) by the lag in [-max_lag, max_lag] maximising its cross-correlation with
    x (C, N) (channel-summed, via FFT); returns (y shifted and cut/padded to N, lag)."""
    n = x.shape[-1]
    m = y.shape[-1]
    size = 1 << math.ceil(math.log2(n + m + 1))
    xc = torch.fft.rfft(x.double().sum(0), size)
    yc = torch.fft.rfft(y.double().sum(0), size)
    corr = torch.fft.irfft(yc * xc.conj(), size)  # corr[k] = sum_t y[t + k] x[t]
    lags = torch.cat([torch.arange(0, max_lag + 1), torch.arange(-max_lag, 0)])
    vals = corr[lags % size]
    lag = int(lags[int(vals.argmax())])
    if lag >= 0:
        y = y[:, lag:]
    else:
        y = torch.nn.functional.pad(y, (-lag, 0))
    y = y[:, :n]
    if y.shape[-1] < n:
        y = torch.nn.functional.pad(y, (0, n - y.shape[-1]))
    return y, lag


def opus_roundtrip(x: torch.Tensor, sr: int, kbps: float) -> tuple[torch.Tensor, dict]:
    """Encode (C, N) at `sr` with libopus at `kbps` in an in-memory Ogg file, decode, resample back
    to `sr` and align.

    Fairness: the signal is first resampled (windowed sinc) to the lowest Opus rate >= sr, so Opus
    sees the whole band the model sees. Decoding goes through the Ogg demuxer, which removes the
    encoder delay (pre-skip); any remaining offset (e.g. from resampling) is found by
    cross-correlation within +-10 ms and removed, so SI-SNR measures coding error, not delay.
    The payload bitrate is measured from the Opus packets (without Ogg overhead)."""
    import av

    C, N = x.shape
    opus_sr = next((r for r in OPUS_RATES if r >= sr), 48000)
    xs = resample(x, sr, opus_sr).clamp(-1, 1)
    buf = io.BytesIO()
    payload = 0
    with av.open(buf, "w", format="ogg") as box:
        st = box.add_stream("libopus", rate=opus_sr, layout="mono" if C == 1 else "stereo")
        st.bit_rate = int(round(kbps * 1000))
        frame = av.AudioFrame.from_ndarray(xs.t().contiguous().reshape(1, -1).numpy().astype(np.float32),
                                           format="flt", layout="mono" if C == 1 else "stereo")
        frame.sample_rate = opus_sr
        frame.pts = 0
        for pkt in list(st.encode(frame)) + list(st.encode(None)):
            payload += pkt.size
            box.mux(pkt)
    buf.seek(0)
    with av.open(buf) as box:
        s = box.streams.audio[0]
        dec_sr = s.rate or 48000
        rs = av.AudioResampler(format="fltp", layout="mono" if C == 1 else "stereo")
        chunks = [f.to_ndarray() for fr in box.decode(s) for f in rs.resample(fr)]
    y = torch.from_numpy(np.concatenate(chunks, 1).astype(np.float32))  # (C, M) at dec_sr
    y = resample(y, dec_sr, sr)
    y, lag = align(y, x, max_lag=int(0.01 * sr))
    info = {"opus_rate": opus_sr, "decoded_rate": dec_sr, "lag_samples": lag,
            "payload_kbps": payload * 8 / (N / sr) / 1000}
    return y, info


CODEC2_MODES = (3200, 2400, 1600, 1400, 1300, 1200, 700)  # bit/s; an 8 kHz speech codec


def codec2_mode(kbps: float) -> int:
    """The highest Codec2 rate at or below `kbps` (its lowest, 700 bit/s, below that)."""
    return next((m for m in CODEC2_MODES if m <= kbps * 1000 + 1e-6), CODEC2_MODES[-1])


def codec2_roundtrip(x: torch.Tensor, sr: int, mode: int) -> torch.Tensor:
    """(C, N) at `sr` -> mono at 8 kHz -> Codec2 at `mode` bit/s -> back to (C, N) at `sr`, aligned."""
    import pycodec2

    c2 = pycodec2.Codec2(mode)
    n8 = c2.samples_per_frame()
    x8 = resample(x.mean(0, keepdim=True), sr, 8000)[0]
    pcm = (x8.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
    pcm = np.pad(pcm, (0, -len(pcm) % n8))
    out = np.concatenate([c2.decode(c2.encode(pcm[i:i + n8])) for i in range(0, len(pcm), n8)])
    y = resample(torch.from_numpy(out.astype(np.float32) / 32767)[None], 8000, sr)[:, :x.shape[-1]]
    y, _ = align(y.expand(x.shape[0], -1).contiguous(), x, max_lag=int(0.02 * sr))
    return y


def band_limit(x: torch.Tensor, sr: int, hz: int = 4000) -> torch.Tensor:
    """x with nothing above `hz` (through a 2 * hz sample rate and back)."""
    return resample(resample(x, sr, 2 * hz), 2 * hz, sr)[..., :x.shape[-1]]


def stoi(y: torch.Tensor, x: torch.Tensor, sr: int) -> float:
    """Short-time objective intelligibility (pystoi; mono mix), in [0, 1] for speech."""
    from pystoi import stoi as _stoi

    return float(_stoi(x.mean(0).numpy().astype(np.float64), y.mean(0).numpy().astype(np.float64), sr))


def scores(y: torch.Tensor, x: torch.Tensor, sr: int, xb: torch.Tensor) -> dict:
    """Full-band and 0-4 kHz scores of a reconstruction (xb: the band-limited original)."""
    return {"si_snr": float(si_snr(y, x).mean()), "mel_distance": mel_distance(y, x, sr),
            "stft_distance": stft_distance(y, x), "stoi": stoi(y, x, sr),
            "mel_distance_4k": mel_distance(band_limit(y, sr), xb, sr)}


@torch.no_grad()
def usage_sweep(tok, directory, min_tokens: int, device, held_out: torch.Tensor, exclude=frozenset()) -> dict:
    """Codebook usage per level over the held-out codes plus whole files of `directory` (in sorted
    order, until at least `min_tokens` frames; files in `exclude`, the held-out ones, are not read
    twice), for the usage figure alone."""
    codes, used = [held_out], []
    for path in list_audio_files(directory):
        if sum(c.shape[1] for c in codes) >= min_tokens:
            break
        if path.resolve() in exclude:
            continue
        try:
            wav, fsr = read_audio(path)
        except DataError:
            continue
        x = to_model_format(wav, fsr, tok.sample_rate, tok.channels)
        if x.shape[-1] < tok.hop_length:
            continue
        codes.append(tok.encode(x[None].to(device))[0].cpu())
        used.append(path.name)
    flat = torch.cat(codes, -1)
    usage, ppl = level_stats(flat, tok.config.codebook_size)
    return {"source": f"held-out files + {directory}", "files": used, "tokens_per_level": int(flat.shape[1]),
            "enough": flat.shape[1] >= min_tokens, "codebook_usage": usage, "perplexity": ppl,
            "protocol": "whole files, mono at the model's rate, all levels"}


GROUP_KEYS = ("si_snr", "mel_distance", "mel_distance_4k", "stoi")


def by_group(label: dict[str, str], systems: dict[str, dict]) -> dict[str, dict]:
    """{label: {"files", "seconds", system: {score: mean}}} over the files that have a label. `label`:
    file -> group (a source rate, a language); `systems`: name -> per-file scores ("ours" first, with
    each file's "seconds"); a system without a file's scores (a missing codec) is left out."""
    out: dict[str, dict] = {}
    for g in sorted(set(label.values())):
        files = [f for f in systems["ours"] if label.get(f) == g]
        if not files:
            continue
        out[g] = {"files": len(files), "seconds": round(sum(systems["ours"][f]["seconds"] for f in files), 3)}
        for name, per_file in systems.items():
            if all(f in per_file for f in files):
                out[g][name] = {k: float(np.mean([per_file[f][k] for f in files])) for k in GROUP_KEYS}
    return out


def least_seen(groups: dict[str, dict], train_seconds: dict[str, float]) -> dict | None:
    """The scored group with the fewest training seconds (ties: by name), with them; None without groups."""
    if not groups:
        return None
    g = min(groups, key=lambda k: (train_seconds.get(k, 0.0), k))
    return {"language": g, "train_seconds": round(train_seconds.get(g, 0.0), 3), **groups[g]}
