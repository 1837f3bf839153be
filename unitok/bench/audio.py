"""Audio tokenizer benchmark (`unitok tokenizer bench DIR --data FOLDER --json OUT`).

For every file of the folder (converted to the tokenizer's rate and channels), in one run:

* ours: encode -> decode at full bandwidth; bitrate, frame rate, codebook usage and perplexity
  per RVQ level (pooled over all files), SI-SNR, log-mel distance, STFT distance, encode and
  decode real-time factors (seconds of compute per second of audio).
* opus: libopus (through PyAV) at the same bitrate, at the lowest Opus rate (8/12/16/24/48 kHz)
  >= the model rate, decoded, resampled back to the model rate and aligned (see `opus_roundtrip`).
* codec2: the 8 kHz speech codec (pycodec2) at the highest of its rates (0.7-3.2 kbps) at or below
  ours; scored full band and, like ours and Opus, band-limited to 0-4 kHz (`mel_distance_4k`).
* STOI (pystoi) for every system; `classical_best`: the lowest log-mel distance among the classical
  codecs at or below our rate. Tokens per second and bits per token: what the language model pays.

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
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unitok.reporting import write_json
from unitok.bench.image import level_stats
from unitok.data.audio import check_duration, list_audio_files, log_mel, read_audio, resample, to_model_format, write_wav
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


def _scores(y: torch.Tensor, x: torch.Tensor, sr: int, xb: torch.Tensor) -> dict:
    """Full-band and 0-4 kHz scores of a reconstruction (xb: the band-limited original)."""
    return {"si_snr": float(si_snr(y, x).mean()), "mel_distance": mel_distance(y, x, sr),
            "stft_distance": stft_distance(y, x), "stoi": stoi(y, x, sr),
            "mel_distance_4k": mel_distance(band_limit(y, sr), xb, sr)}


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
    c2_rate = codec2_mode(kbps)
    import importlib.util

    c2_missing = None if importlib.util.find_spec("pycodec2") else "pycodec2 is not installed (make setup installs it)"

    ours, opus, codec2, skipped = {}, {}, {}, {}
    all_codes: list[torch.Tensor] = []  # (L, T') per file
    t_enc = t_dec = seconds = 0.0
    for i, path in enumerate(tqdm(files, desc="bench audio", disable=not sys.stderr.isatty())):  # a bar on a tty only
        try:
            wav, fsr = read_audio(path)
        except DataError as e:
            skipped[path.name] = str(e)
            print(f"skipped unreadable file {path.name}: {e}", flush=True)
            continue
        x = to_model_format(wav, fsr, sr, C)  # (C, N)
        n = x.shape[-1]
        try:
            check_duration(n, sr)
        except DataError as e:
            skipped[path.name] = str(e)
            print(f"skipped {path.name}: {e}", flush=True)
            continue
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
        xb = band_limit(x, sr)
        ours[path.name] = {**_scores(y, x, sr, xb), "seconds": round(dur, 3)}
        rows = [("original", x), (f"ours ({kbps:g} kbps)", y)]
        if opus_missing is None:
            yo, info = opus_roundtrip(x, sr, kbps)
            opus[path.name] = {**_scores(yo, x, sr, xb), **info}
            rows.append((f"Opus ({kbps:g} kbps)", yo))
        if c2_missing is None:
            yc = codec2_roundtrip(x, sr, c2_rate)
            codec2[path.name] = _scores(yc, x, sr, xb)
            rows.append((f"Codec2 ({c2_rate / 1000:g} kbps)", yc))
        if i < 4:
            stem = path.name.rsplit(".", 1)[0]
            _spectrogram_png(out_dir / "spectrograms" / f"{stem}.png", path.name, rows, sr)
            for name, w in rows:
                write_wav(out_dir / "audio" / f"{stem}.{name.split()[0].lower()}.wav", w, sr)
    if not ours:
        raise DataError(f"{args.data}: no readable audio files ({len(skipped)} unreadable)")

    flat = torch.cat(all_codes, -1)  # (L, total frames)
    usage, perplexity = level_stats(flat, tok.config.codebook_size)
    need = getattr(args, "usage_tokens", None) or 20 * tok.config.codebook_size
    usage_block = {"source": str(args.data), "tokens_per_level": int(flat.shape[1]), "enough": flat.shape[1] >= need,
                   "codebook_usage": usage, "perplexity": perplexity}
    if flat.shape[1] < need:  # too few held-out frames: whole files of --usage-data (or --data) on top
        usage_block = usage_sweep(tok, getattr(args, "usage_data", None) or args.data, need, device, flat,
                                  exclude={p.resolve() for p in files})

    def mean(d, k):
        return float(np.mean([v[k] for v in d.values()])) if d else None

    result = {
        "tokenizer": str(args.tokenizer), "data": str(args.data), "files": len(ours), "seconds": round(seconds, 2),
        "sample_rate": sr, "channels": C, "device": str(device), "skipped": skipped,
        "metrics": {"mel_distance": "mean |log10 mel(y) - log10 mel(x)|, 80 bands, n_fft 1024, hop 256, floor 1e-5",
                    "stft_distance": "mean |log10 |STFT(y)| - log10 |STFT(x)||, n_fft 512/1024/2048, floor 1e-5",
                    "si_snr": "scale-invariant SNR in dB", "real_time_factor": "compute seconds / audio seconds"},
        "ours": {"kbps": round(kbps, 4), "frame_rate": tok.frame_rate, "levels": levels,
                 "tokens_per_second": tok.frame_rate * levels, "bits_per_token": math.log2(tok.config.codebook_size),
                 "codebook_size": tok.config.codebook_size, "si_snr": mean(ours, "si_snr"),
                 "mel_distance": mean(ours, "mel_distance"), "stft_distance": mean(ours, "stft_distance"),
                 "stoi": mean(ours, "stoi"), "mel_distance_4k": mean(ours, "mel_distance_4k"),
                 "tokens_counted": int(flat.numel()),
                 "codebook_usage": usage, "codebook_perplexity": perplexity, "usage": usage_block,
                 "real_time_factor": {"encode": t_enc / seconds, "decode": t_dec / seconds}, "per_file": ours},
        # Opus's rate is what it spent (payload), not what it was asked for: below ~5 kbps it cannot go
        "opus": ({"kbps": round(mean(opus, "payload_kbps"), 4), "requested_kbps": round(kbps, 4),
                  "si_snr": mean(opus, "si_snr"), "mel_distance": mean(opus, "mel_distance"),
                  "stft_distance": mean(opus, "stft_distance"), "stoi": mean(opus, "stoi"),
                  "mel_distance_4k": mean(opus, "mel_distance_4k"),
                  "payload_kbps": mean(opus, "payload_kbps"), "per_file": opus}
                 if opus_missing is None else {"kbps": round(kbps, 4), "missing": opus_missing, "si_snr": None,
                                               "mel_distance": None, "per_file": {}}),
    }
    result["codec2"] = ({"kbps": c2_rate / 1000, **{k: mean(codec2, k) for k in
                                                     ("si_snr", "mel_distance", "stft_distance", "stoi",
                                                      "mel_distance_4k")}, "per_file": codec2,
                         "note": "8 kHz speech codec: compare mel_distance_4k (both band-limited to 0-4 kHz)"}
                        if c2_missing is None else {"kbps": c2_rate / 1000, "missing": c2_missing})
    cands = [(n, result[n]) for n in ("opus", "codec2")
             if result[n].get("mel_distance") is not None and result[n]["kbps"] <= kbps + 1e-9]
    if cands:
        name, best = min(cands, key=lambda c: c[1]["mel_distance"])
        result["classical_best"] = {"name": name, "mel_distance": best["mel_distance"], "kbps": best["kbps"],
                                    "mel_distance_4k": best["mel_distance_4k"]}
    write_json(result, json_path)
    md = _markdown(result)
    (out_dir / "bench.md").write_text(md)
    print(md)
    return 0


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


def _markdown(r: dict) -> str:
    o, p, c = r["ours"], r["opus"], r["codec2"]
    f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        f"Audio benchmark: {r['files']} files, {r['seconds']:.1f} s at {r['sample_rate']} Hz ({r['device']}).",
        "",
        "| codec | kbps | SI-SNR (dB) ↑ | log-mel dist. ↓ | STFT dist. ↓ |",
        "| --- | --- | --- | --- | --- |",
        f"| ours ({o['levels']} x {o['codebook_size']} codes, {o['frame_rate']:g} Hz) | {o['kbps']:g} | {f(o['si_snr'], 2)} | "
        f"{f(o['mel_distance'])} | {f(o['stft_distance'])} |",
        f"| Opus (libopus) | {p['kbps']:.2f} | {f(p.get('si_snr'), 2)} | {f(p.get('mel_distance'))} | "
        f"{f(p.get('stft_distance'))} |" if "missing" not in p else f"| Opus | missing: {p['missing']} | | | |",
        f"| Codec2 (8 kHz) | {c['kbps']:g} | {f(c.get('si_snr'), 2)} | {f(c.get('mel_distance'))} | "
        f"{f(c.get('stft_distance'))} |" if "missing" not in c else f"| Codec2 | missing: {c['missing']} | | | |",
        "",
        "| codec | STOI ↑ | log-mel dist. 0-4 kHz ↓ |",
        "| --- | --- | --- |",
        *(f"| {n} | {f(e.get('stoi'))} | {f(e.get('mel_distance_4k'))} |" for n, e in
          (("ours", o), ("Opus", p), ("Codec2", c)) if "missing" not in e),
        "",
        *([f"Opus was asked for {p['requested_kbps']:g} kbps and spent {p['kbps']:.2f} kbps (its floor): "
           "it is not a candidate for the best classical codec at or below our rate.", ""]
          if p.get("requested_kbps") and p["kbps"] > o["kbps"] + 1e-9 else []),
        f"Tokens per second: {o['tokens_per_second']:g} ({o['levels']} levels x {o['frame_rate']:g} Hz), "
        f"{o['bits_per_token']:g} bits per token.",
        "",
        "log-mel distance: mean absolute difference of log10 mel spectrograms (80 bands, n_fft 1024, hop 256).",
        "STFT distance: the same on log10 STFT magnitudes, averaged over n_fft 512/1024/2048.",
        "",
        f"Codebook usage per level: {', '.join(f'{u:.0%}' for u in o['codebook_usage'])}",
        f"Codebook perplexity per level: {', '.join(f'{q:.0f}' for q in o['codebook_perplexity'])}",
        f"Codebook usage per level over {o['usage']['tokens_per_level']:,} frames ({o['usage']['source']}"
        f"{'' if o['usage']['enough'] else '; fewer than 20 x codebook size'}): "
        f"{', '.join(f'{u:.0%}' for u in o['usage']['codebook_usage'])}",
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
