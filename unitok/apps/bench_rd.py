"""`unitok bench rd`: one rate-distortion figure per modality, our presets beside the classical curves.

    unitok bench rd image --data HELD_OUT_IMAGES --results f16=runs/f16/heldout.json f8=... --out rd-image
    unitok bench rd audio --data HELD_OUT_AUDIO --results lm=runs/au/bench.json 6k=... --out rd-audio
    unitok bench rd video --data HELD_OUT_VIDEOS --results vq3d=runs/vid/bench.json --out rd-video

Our points come from `unitok tokenizer bench` JSON files (measured on the same --data); the
classical curves (`unitok.bench.rd`) are computed here, on the same material. Writes OUT/rd.png
and OUT/rd.json (every point).
"""

from __future__ import annotations

import json
from pathlib import Path

from unitok.bench.rd import audio_curves, image_curves, video_curves
from unitok.errors import ConfigError, DataError
from unitok.reporting import write_json

__all__ = ["run"]


def _ours(results: list[str], modality: str) -> list[dict]:
    pts = []
    for item in results:
        label, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--results takes LABEL=PATH, got {item!r}")
        try:
            o = json.loads(Path(path).read_text())["ours"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise DataError(f"{path}: not a `unitok tokenizer bench` JSON ({type(e).__name__}: {e})") from None
        if modality == "image":
            pts.append({"label": label, "bpp": o["bpp"], "psnr": o["psnr"], "tokens_per_image": o.get("tokens_per_image")})
        elif modality == "audio":
            pts.append({"label": label, "kbps": o["kbps"], "mel_distance": o["mel_distance"],
                        "mel_distance_4k": o.get("mel_distance_4k"), "tokens_per_second": o.get("tokens_per_second")})
        else:
            pts.append({"label": label, "kbps": o["kbps"], "psnr": o["psnr"], "tokens_per_second": o.get("tokens_per_second")})
    return pts


def _load(modality: str, data: str, max_files: int | None, sr: int = 16000, channels: int = 1):
    """The same material the tokenizer benchmark measures: tiles, mono/stereo clips, or video clips."""
    from unitok.data.media import MIN_IMAGE_SIDE, SkipLog, list_media, read_image

    def readable(files, read):  # what the tokenizer benchmark skips is skipped here too
        for p in files:
            try:
                yield read(p)
            except DataError as e:
                print(f"skipped {p}: {str(e).split(': ', 1)[-1]}")

    if modality == "image":
        from unitok.bench.image import image_tiles

        files = list_media(data, "image", SkipLog())[:max_files]
        return [t for img in readable(files, lambda p: read_image(p, MIN_IMAGE_SIDE)) for t in image_tiles(img)], None
    if modality == "audio":
        from unitok.data.audio import list_audio_files, read_audio, to_model_format

        files = list_audio_files(data)[:max_files]
        return list(readable(files, lambda p: to_model_format(*read_audio(p), sr, channels))), sr
    from unitok.bench.h264 import video_fps
    from unitok.bench.image import video_clip

    files = list_media(data, "video", SkipLog())[:max_files]
    pairs = list(readable(files, lambda p: (video_clip(p, 17), video_fps(p))))
    return [c for c, _ in pairs], [r for _, r in pairs]


def run(args) -> int:
    m = args.modality
    ours = _ours(args.results, m)
    fmt = {}
    if m == "audio":  # the tokenizers' format, from the first bench JSON
        first = json.loads(Path(args.results[0].partition("=")[2]).read_text())
        fmt = {"sr": first.get("sample_rate", 16000), "channels": first.get("channels", 1)}
    material, extra = _load(m, args.data, args.max_files, **fmt)
    if not material:
        raise DataError(f"{args.data}: nothing readable for the {m} curves")
    curves = image_curves(material) if m == "image" else audio_curves(material, extra) if m == "audio" \
        else video_curves(material, extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"modality": m, "data": str(args.data), "ours": ours, "classical": curves}
    res["png"] = str(_plot(res, out / "rd.png"))
    write_json(res, out / "rd.json")
    for p in ours:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()})
    print(f"wrote {out / 'rd.png'} and {out / 'rd.json'}")
    return 0


def _plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res["modality"]
    panels = [("mel_distance", "log-mel distance (full band)"), ("mel_distance_4k", "log-mel distance (0-4 kHz)")] \
        if m == "audio" else [("psnr", "PSNR (dB)")]
    x = "bpp" if m == "image" else "kbps"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), dpi=120, squeeze=False)
    for ax, (y, ylabel) in zip(axes[0], panels):
        for name, pts in res["classical"].items():
            pts = sorted(pts, key=lambda p: p[x])
            ax.plot([p[x] for p in pts], [p[y] for p in pts], "-" if "@" not in name else "--",
                    marker="o", ms=2.5, lw=1, label=name.upper() if "@" not in name else name)
        for i, p in enumerate(res["ours"]):
            if p.get(y) is None:
                continue
            ax.plot([p[x]], [p[y]], marker="**Dv^"[i % 5], color="crimson", ms=11, ls="none")
            unit = (f"{p['tokens_per_image']:g} tok/img" if p.get("tokens_per_image") else
                    f"{p['tokens_per_second']:g} tok/s" if p.get("tokens_per_second") else "")
            ax.annotate(f"{p['label']} ({unit})" if unit else p["label"], (p[x], p[y]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel" if m == "image" else "kbit/s")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{m}: rate-distortion on {Path(res['data']).name} (ours: red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
