"""The classical rate-distortion curves of `unitok bench rd` (its command: `unitok.apps.bench_rd`), with
the benchmarks' own codec wrappers: images: JPEG and WebP at full size and downscaled by 2, 4 and 8
(bicubic down and up), PSNR over the benchmark's 256x256 tiles; audio: Opus and every Codec2 mode,
log-mel distance full band and band-limited to 0-4 kHz; video: H.264 (libx264) over a CRF sweep, PSNR
per frame.
"""

from __future__ import annotations

import numpy as np

__all__ = ["image_curves", "audio_curves", "video_curves"]

IMAGE_QUALITIES = {"jpeg": (1, 3, 5, 10, 20, 35, 50, 75, 90), "webp": (0, 2, 5, 10, 20, 35, 50, 75, 90)}
OPUS_KBPS = (6, 8, 12, 16, 24)
H264_CRFS = (18, 24, 30, 36, 42, 48, 51)


def image_curves(tiles: list[np.ndarray]) -> dict[str, list[dict]]:
    """{name: [{bpp, psnr, ssim, quality}]} for JPEG/WebP at scales 1, 2, 4, 8."""
    from unitok.bench.image import codec_at

    return {(c if s == 1 else f"{c}@1/{s}"): [codec_at(tiles, c, q, scale=s) for q in IMAGE_QUALITIES[c]]
            for s in (1, 2, 4, 8) for c in ("jpeg", "webp")}


def audio_curves(clips: list, sr: int) -> dict[str, list[dict]]:
    """{name: [{kbps, mel_distance, mel_distance_4k}]} for Opus and Codec2; clips are (C, N) at sr."""
    from unitok.bench.audio import CODEC2_MODES, band_limit, codec2_roundtrip, opus_roundtrip, scores

    def mean_scores(fn) -> dict:
        s = [scores(fn(x), x, sr, band_limit(x, sr)) for x in clips]
        return {k: float(np.mean([d[k] for d in s])) for k in ("mel_distance", "mel_distance_4k", "si_snr", "stoi")}

    def opus(k: float) -> dict:  # at the rate Opus spent (its payload), not the one it was asked for
        spent = []

        def run(x):
            y, info = opus_roundtrip(x, sr, k)
            spent.append(info["payload_kbps"])
            return y
        scores = mean_scores(run)
        return {"kbps": float(np.mean(spent)), "requested_kbps": float(k), **scores}

    out = {"opus": [opus(k) for k in OPUS_KBPS]}
    out["codec2"] = [{"kbps": m / 1000, **mean_scores(lambda x, m=m: codec2_roundtrip(x, sr, m))}
                     for m in sorted(CODEC2_MODES)]
    return out


def video_curves(clips: list[np.ndarray], fps: list[float]) -> dict[str, list[dict]]:
    """{"h264": [{crf, kbps, psnr}]} over the clips (T, H, W, 3)."""
    from unitok.bench.h264 import h264_roundtrip
    from unitok.metrics import psnr

    pts = []
    for crf in H264_CRFS:
        rt = [h264_roundtrip(c, r, crf) for c, r in zip(clips, fps)]
        pts.append({"crf": crf, "kbps": float(np.mean([b / (len(c) / r) / 1000 for (_, b), c, r in zip(rt, clips, fps)])),
                    "psnr": float(np.mean([psnr(a, b) for (y, _), c in zip(rt, clips) for a, b in zip(c, y)]))})
    return {"h264": pts}
