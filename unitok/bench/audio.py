"""Audio tokenizer benchmark (`unitok tokenizer bench DIR --data FOLDER --json OUT`).

For every file of the folder (converted to the tokenizer's rate and channels), in one run:

* ours: encode -> decode at full bandwidth; bitrate, frame rate, codebook usage and perplexity
  per RVQ level (pooled over all files), SI-SNR, log-mel distance, STFT distance, encode and
  decode real-time factors (seconds of compute per second of audio).
* opus: libopus (through PyAV) at the same bitrate, at the lowest Opus rate (8/12/16/24/48 kHz)
  >= the model rate, decoded, resampled back to the model rate and aligned (see `opus_roundtrip`).

Metrics (all at the model rate, on every channel, averaged):
* SI-SNR (dB): scale-invariant SNR of the reconstruction against the original.
* log-mel distance: mean |log10 mel(y) - log10 mel(x)|, 80 mel bands, n_fft 1024, hop 256,
  magnitudes floored at 1e-5.
* STFT distance: mean |log10 |STFT(y)| - log10 |STFT(x)||, averaged over n_fft 512/1024/2048
  (hop n_fft/4), floored at 1e-5.

Writes the JSON (`ours`, `opus` entries with `kbps`, `si_snr`, `mel_distance`, `per_file`),
OUT/bench.md (markdown table), OUT/spectrograms/*.png (original vs. ours vs. Opus) and a few
reconstructions in OUT/audio/.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from unitok.bench.common import write_json
from unitok.data.audio import list_audio_files, log_mel, read_audio, resample, to_model_format, write_wav
from unitok.errors import DataError
from unitok.metrics import mel_distance, si_snr, stft_distance

__all__ = ["run", "opus_roundtrip", "align"]

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


def _opus_available() -> str | None:
    try:
        import av

        av.codec.Codec("libopus", "w")
        return None
    except Exception as e:  # no PyAV, or PyAV without libopus
        return f"{type(e).__name__}: {e}"


def _spectrogram_png(path: Path, title: str, rows: list[tuple[str, torch.Tensor]], sr: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.2 * len(rows)), sharex=True)
    for ax, (name, w) in zip(np.atleast_1d(axes), rows):
        m = log_mel(w.mean(0), sr, 1024, 256, 80).numpy()
        ax.imshow(m, origin="lower", aspect="auto", vmin=-5, vmax=m.max(), cmap="magma",
                  extent=[0, w.shape[-1] / sr, 0, 80])
        ax.set_ylabel("mel band")
        ax.set_title(name, fontsize=9)
    np.atleast_1d(axes)[-1].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args, tokenizer) -> int:
    from tqdm import tqdm

    tok = tokenizer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = tok.to(device).eval()
    sr, C = tok.sample_rate, tok.channels
    json_path = Path(args.json)
    out_dir = Path(args.out) if args.out else json_path.parent
    (out_dir / "spectrograms").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    files = list_audio_files(args.data)
    if args.max_files:
        files = files[: args.max_files]
    levels = tok.config.levels
    kbps = tok.config.kbps_per_level * levels
    opus_missing = _opus_available()

    ours, opus, skipped = {}, {}, {}
    all_codes: list[torch.Tensor] = []  # (L, T') per file
    t_enc = t_dec = seconds = 0.0
    for i, path in enumerate(tqdm(files, desc="bench audio")):
        try:
            wav, fsr = read_audio(path)
        except DataError as e:
            skipped[path.name] = str(e)
            print(f"skipped unreadable file {path.name}: {e}", flush=True)
            continue
        x = to_model_format(wav, fsr, sr, C)  # (C, N)
        n = x.shape[-1]
        dur = n / sr
        seconds += dur
        xb = x[None].to(device)
        t = time.perf_counter()
        codes = tok.encode(xb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_enc += time.perf_counter() - t
        t = time.perf_counter()
        y = tok.decode(codes, length=n)[0].float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_dec += time.perf_counter() - t
        all_codes.append(codes[0].cpu())
        ours[path.name] = {"si_snr": float(si_snr(y, x).mean()), "mel_distance": mel_distance(y, x, sr),
                           "stft_distance": stft_distance(y, x), "seconds": round(dur, 3)}
        rows = [("original", x), (f"ours ({kbps:g} kbps)", y)]
        if opus_missing is None:
            yo, info = opus_roundtrip(x, sr, kbps)
            opus[path.name] = {"si_snr": float(si_snr(yo, x).mean()), "mel_distance": mel_distance(yo, x, sr),
                               "stft_distance": stft_distance(yo, x), **info}
            rows.append((f"Opus ({kbps:g} kbps)", yo))
        if i < 4:
            stem = path.name.rsplit(".", 1)[0]
            _spectrogram_png(out_dir / "spectrograms" / f"{stem}.png", path.name, rows, sr)
            for name, w in rows:
                write_wav(out_dir / "audio" / f"{stem}.{name.split()[0].lower()}.wav", w, sr)
    if not ours:
        raise DataError(f"{args.data}: no readable audio files ({len(skipped)} unreadable)")

    usage, perplexity = [], []
    flat = torch.cat(all_codes, -1)  # (L, total frames)
    for lvl in range(flat.shape[0]):
        counts = torch.bincount(flat[lvl], minlength=tok.config.codebook_size).double()
        p = counts / counts.sum()
        usage.append(float((counts > 0).double().mean()))
        perplexity.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))

    def mean(d, k):
        return float(np.mean([v[k] for v in d.values()])) if d else None

    result = {
        "tokenizer": str(args.tokenizer), "data": str(args.data), "files": len(ours), "seconds": round(seconds, 2),
        "sample_rate": sr, "channels": C, "device": str(device), "skipped": skipped,
        "metrics": {"mel_distance": "mean |log10 mel(y) - log10 mel(x)|, 80 bands, n_fft 1024, hop 256, floor 1e-5",
                    "stft_distance": "mean |log10 |STFT(y)| - log10 |STFT(x)||, n_fft 512/1024/2048, floor 1e-5",
                    "si_snr": "scale-invariant SNR in dB", "real_time_factor": "compute seconds / audio seconds"},
        "ours": {"kbps": round(kbps, 4), "frame_rate": tok.frame_rate, "levels": levels,
                 "codebook_size": tok.config.codebook_size, "si_snr": mean(ours, "si_snr"),
                 "mel_distance": mean(ours, "mel_distance"), "stft_distance": mean(ours, "stft_distance"),
                 "codebook_usage": usage, "codebook_perplexity": perplexity,
                 "real_time_factor": {"encode": t_enc / seconds, "decode": t_dec / seconds}, "per_file": ours},
        "opus": ({"kbps": round(kbps, 4), "si_snr": mean(opus, "si_snr"), "mel_distance": mean(opus, "mel_distance"),
                  "stft_distance": mean(opus, "stft_distance"),
                  "payload_kbps": mean(opus, "payload_kbps"), "per_file": opus}
                 if opus_missing is None else {"kbps": round(kbps, 4), "missing": opus_missing, "si_snr": None,
                                               "mel_distance": None, "per_file": {}}),
    }
    write_json(result, json_path)
    md = _markdown(result)
    (out_dir / "bench.md").write_text(md)
    print(md)
    return 0


def _markdown(r: dict) -> str:
    o, p = r["ours"], r["opus"]
    f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        f"Audio benchmark: {r['files']} files, {r['seconds']:.1f} s at {r['sample_rate']} Hz ({r['device']}).",
        "",
        "| codec | kbps | SI-SNR (dB) ↑ | log-mel dist. ↓ | STFT dist. ↓ |",
        "| --- | --- | --- | --- | --- |",
        f"| ours ({o['levels']} x {o['codebook_size']} codes, {o['frame_rate']:g} Hz) | {o['kbps']:g} | {f(o['si_snr'], 2)} | "
        f"{f(o['mel_distance'])} | {f(o['stft_distance'])} |",
        f"| Opus (libopus) | {p['kbps']:g} | {f(p.get('si_snr'), 2)} | {f(p.get('mel_distance'))} | "
        f"{f(p.get('stft_distance'))} |" if "missing" not in p else f"| Opus | missing: {p['missing']} | | | |",
        "",
        "log-mel distance: mean absolute difference of log10 mel spectrograms (80 bands, n_fft 1024, hop 256).",
        "STFT distance: the same on log10 STFT magnitudes, averaged over n_fft 512/1024/2048.",
        "",
        f"Codebook usage per level: {', '.join(f'{u:.0%}' for u in o['codebook_usage'])}",
        f"Codebook perplexity per level: {', '.join(f'{q:.0f}' for q in o['codebook_perplexity'])}",
        f"Real-time factor (compute s / audio s): encode {o['real_time_factor']['encode']:.4f}, "
        f"decode {o['real_time_factor']['decode']:.4f}",
        "",
        "| file | s | ours SI-SNR | ours log-mel | Opus SI-SNR | Opus log-mel |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in o["per_file"].items():
        q = p["per_file"].get(name, {})
        lines.append(f"| {name} | {v['seconds']:.1f} | {f(v['si_snr'], 2)} | {f(v['mel_distance'])} | "
                     f"{f(q.get('si_snr'), 2)} | {f(q.get('mel_distance'))} |")
    return "\n".join(lines) + "\n"
