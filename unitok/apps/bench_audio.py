"""`unitok tokenizer bench` for audio tokenizers (`unitok tokenizer bench DIR --data FOLDER --json OUT`).

For every file of the folder (converted to the tokenizer's rate and channels), in one run:

* ours: encode -> decode at full bandwidth; bitrate, frame rate, codebook usage and perplexity
  per RVQ level (pooled over all files), SI-SNR, log-mel distance, STFT distance, encode and
  decode real-time factors (seconds of compute per second of audio).
* WER under pocketsphinx (`unitok.bench.judges.SpeechJudge`, English only; lower case, no
  punctuation) of the original (`original.wer`) and of our reconstruction (`ours.wer`) against the
  files' transcripts (`transcripts.tsv` / `captions.tsv` / a same-stem .txt beside a file), over the
  files that have one: the scenes captions' grammar when every transcript is a scenes caption, else
  its language model. Without any transcript, `ours.wer` is against the judge's transcript of the
  original and `original.wer` is null.
* opus at the same bitrate and codec2 at the highest of its rates at or below ours, as
  `unitok.bench.audio` describes; band-limited scores to 0-4 kHz for all three (`mel_distance_4k`).
* STOI (pystoi) for every system; `classical_best`: the lowest log-mel distance among the classical
  codecs at or below our rate. Tokens per second and bits per token: what the language model pays.
* `by_rate`: the scores per source sampling rate (an 8 kHz file is upsampled to the model rate, as
  the tokenizer's policy does); `by_language`: per language, where --data has a SOURCES.tsv with a
  `language` column (the corpus layout, `unitok data split`); with --train-data (the training
  folder, its SOURCES.tsv) also `least_seen_language`: the held-out language with the fewest
  training seconds, and its scores.

The metrics are `unitok.bench.audio.scores`. Writes the JSON (`ours`, `opus` entries with `kbps`,
`si_snr`, `mel_distance`, `per_file`), OUT/bench.md (markdown table), OUT/spectrograms/*.png
(original vs. ours vs. Opus) and a few reconstructions in OUT/audio/.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unitok.bench.audio import (band_limit, by_group, codec2_mode, codec2_roundtrip, least_seen, opus_roundtrip, scores,
                                usage_sweep)
from unitok.bench.image import level_stats
from unitok.data.audio import check_duration, list_audio_files, log_mel, read_audio, to_model_format, write_wav
from unitok.data.corpus import read_sources
from unitok.errors import DataError
from unitok.reporting import write_json

__all__ = ["run"]


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
    said = {f.name: _transcript(f) for f in files}
    judge = _judge_for(said)
    heard: dict = {}  # file -> (the judge's transcript of the original, of ours)
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
        heard[path.name] = (judge.transcribe(x.numpy(), sr), judge.transcribe(y.numpy(), sr))
        xb = band_limit(x, sr)
        ours[path.name] = {**scores(y, x, sr, xb), "seconds": round(dur, 3), "source_rate": fsr}
        rows = [("original", x), (f"ours ({kbps:g} kbps)", y)]
        if opus_missing is None:
            yo, info = opus_roundtrip(x, sr, kbps)
            opus[path.name] = {**scores(yo, x, sr, xb), **info}
            rows.append((f"Opus ({kbps:g} kbps)", yo))
        if c2_missing is None:
            yc = codec2_roundtrip(x, sr, c2_rate)
            codec2[path.name] = scores(yc, x, sr, xb)
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
    result["ours"]["wer"], result["original"] = _speech_wer(heard, said, judge)
    for file, (_, h) in heard.items():
        ours[file]["heard"] = h  # what the judge heard in our reconstruction
    cands = [(n, result[n]) for n in ("opus", "codec2")
             if result[n].get("mel_distance") is not None and result[n]["kbps"] <= kbps + 1e-9]
    if cands:
        name, best = min(cands, key=lambda c: c[1]["mel_distance"])
        result["classical_best"] = {"name": name, "mel_distance": best["mel_distance"], "kbps": best["kbps"],
                                    "mel_distance_4k": best["mel_distance_4k"]}
    systems = {"ours": ours, "opus": opus, "codec2": codec2}
    result["by_rate"] = by_group({f: f"{v['source_rate']} Hz" for f, v in ours.items()}, systems)
    rows = read_sources(Path(args.data))
    if any(r.get("language") for r in rows.values()):
        result["by_language"] = by_group({f: r["language"] for f, r in rows.items() if r.get("language")}, systems)
        if getattr(args, "train_data", None):
            train = {}  # language -> training seconds (the `seconds` column; a file counts 0 without one)
            for r in read_sources(Path(args.train_data)).values():
                if r.get("language"):
                    train[r["language"]] = train.get(r["language"], 0.0) + float(r.get("seconds") or 0)
            result["least_seen_language"] = least_seen(result["by_language"], train)
    write_json(result, json_path)
    md = _markdown(result)
    (out_dir / "bench.md").write_text(md)
    print(md)
    return 0


def _transcript(path: Path) -> str | None:
    """A file's transcript: its line in transcripts.tsv / captions.tsv beside it (by name or stem), or a
    same-stem .txt; None without one."""
    for tsv in ("transcripts.tsv", "captions.tsv"):
        f = path.parent / tsv
        if f.is_file():
            lines = dict(line.split("\t")[:2] for line in f.read_text(errors="replace").splitlines() if "\t" in line)
            text = lines.get(path.name, lines.get(path.stem))
            if text is not None:
                return text.strip()
    txt = path.with_suffix(".txt")
    return txt.read_text(errors="replace").strip() if txt.is_file() else None


def _judge_for(said: dict):
    """The scenes grammar's judge when the transcripts given are all scenes captions, else free decoding
    with pocketsphinx's language model."""
    from unitok.bench.judges import SpeechJudge
    from unitok.data.scenes import parse_caption

    given = [t for t in said.values() if t]
    return SpeechJudge(grammar=bool(given) and all(parse_caption(_words(t)) for t in given))


def _words(text: str) -> str:
    """Lower case, punctuation out (pocketsphinx writes neither): "Printing, in" -> "printing in"."""
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).split())


def _speech_wer(heard: dict, said: dict, judge) -> tuple[float | None, dict]:
    """-> (ours.wer, the `original` block). The references are the files' transcripts where there are
    some (both WERs over those files), else the judge's transcript of each original (ours.wer only)."""
    import importlib.metadata as md

    from unitok.metrics import wer

    def corpus(pairs):  # (reference, hypothesis); a reference without words is left out
        pairs = [(_words(r), _words(h)) for r, h in pairs if _words(r)]
        return round(wer([h for _, h in pairs], [r for r, _ in pairs]), 4) if pairs else None

    given = [k for k in heard if said[k]]
    block = {"judge": f"pocketsphinx {md.version('pocketsphinx')} en-us, "
                      + ("the scenes captions' grammar" if judge.grammar else "its language model"),
             "transcribed_files": len(given)}
    if not given:
        return corpus(heard.values()), {**block, "wer": None, "reference": "the judge's transcript of the original"}
    return (corpus([(said[k], heard[k][1]) for k in given]),
            {**block, "wer": corpus([(said[k], heard[k][0]) for k in given]),
             "reference": f"the files' transcripts ({len(given)} of {len(heard)} files)"})


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
        f"WER under the speech judge ({r['original']['judge']}; reference: {r['original']['reference']}): "
        f"original {f(r['original']['wer'])}, ours {f(o['wer'])}.",
        "",
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
        *_group_lines(r),
        "| file | s | ours SI-SNR | ours log-mel | Opus SI-SNR | Opus log-mel |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in o["per_file"].items():
        q = p["per_file"].get(name, {})
        lines.append(f"| {name} | {v['seconds']:.1f} | {f(v['si_snr'], 2)} | {f(v['mel_distance'])} | "
                     f"{f(q.get('si_snr'), 2)} | {f(q.get('mel_distance'))} |")
    return "\n".join(lines) + "\n"


def _group_lines(r: dict) -> list[str]:
    """The 0-4 kHz log-mel distance per source rate and per language (ours, Codec2, Opus)."""
    f = lambda e, k: "n/a" if e is None else f"{e[k]:.3f}"  # noqa: E731
    lines = []
    for key, title in (("by_rate", "source rate"), ("by_language", "language")):
        if key not in r:
            continue
        lines += [f"| {title} | files | s | ours log-mel 0-4 kHz | Codec2 | Opus |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {g} | {v['files']} | {v['seconds']:.1f} | {f(v['ours'], 'mel_distance_4k')} | "
                  f"{f(v.get('codec2'), 'mel_distance_4k')} | {f(v.get('opus'), 'mel_distance_4k')} |"
                  for g, v in r[key].items()]
        lines.append("")
    if r.get("least_seen_language"):
        ls = r["least_seen_language"]
        lines += [f"Language seen least in training: {ls['language']} ({ls['train_seconds']:.1f} s), "
                  f"{ls['files']} held-out files: ours {f(ls['ours'], 'mel_distance_4k')} log-mel 0-4 kHz.", ""]
    return lines
