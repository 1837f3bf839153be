"""H.264 (libx264 through PyAV) at a matched bit rate: the classical baseline of the video benchmark.

    rec, bits = h264_roundtrip(clip, fps, crf=30)      # clip (T, H, W, 3) uint8 -> same shape, stream bits
    best = h264_matched(clips, [fps] * len(clips), bits)  # the lowest-CRF setting whose mean bits <= target

The bit count is the raw H.264 stream (every encoded packet, SPS/PPS included, no container): what a
decoder needs. Pixels go in as yuv420p (libx264's default profile, what players decode), preset
`medium`, one clip per stream (its first frame an IDR frame).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["h264_roundtrip", "h264_matched", "video_fps"]

CRF_RANGE = (0, 51)  # libx264's CRF scale for 8-bit video


def video_fps(path) -> float:
    """Average frame rate of a file's first video stream (25 if the container does not say)."""
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
    return float(rate) if rate else 25.0


def h264_roundtrip(clip: np.ndarray, fps: float, crf: int, preset: str = "medium") -> tuple[np.ndarray, int]:
    """Encode (T, H, W, 3) uint8 frames with libx264 at `crf`, decode them; -> (frames, stream bits)."""
    import av

    T, H, W, _ = clip.shape
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    enc.framerate, enc.time_base = rate, 1 / rate
    enc.options = {"crf": str(crf), "preset": preset}
    packets = []
    for i, f in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets.extend(enc.encode(frame))
    packets.extend(enc.encode(None))
    bits = 8 * sum(p.size for p in packets)
    dec = av.CodecContext.create("h264", "r")
    if enc.extradata:
        dec.extradata = enc.extradata
    out = []
    for p in packets:
        out.extend(f.to_ndarray(format="rgb24") for f in dec.decode(p))
    out.extend(f.to_ndarray(format="rgb24") for f in dec.decode(None))
    if len(out) != T:
        raise RuntimeError(f"libx264 round trip returned {len(out)} frames for {T}")
    return np.stack(out), bits


def h264_matched(clips: list[np.ndarray], fps: list[float], target_bits: float) -> dict:
    """The lowest CRF (best quality) whose mean stream bits per clip is <= target_bits, by bisection
    (bits fall as CRF rises). If even CRF 51 is above the target, CRF 51 with a note."""
    cache: dict[int, tuple[list[np.ndarray], float]] = {}

    def at(crf: int):
        if crf not in cache:
            rt = [h264_roundtrip(c, r, crf) for c, r in zip(clips, fps)]
            cache[crf] = ([r for r, _ in rt], float(np.mean([b for _, b in rt])))
        return cache[crf]

    lo, hi = CRF_RANGE
    if at(hi)[1] > target_bits:
        crf, note = hi, f"H.264 cannot reach {target_bits:.0f} bits per clip: CRF {hi} needs {at(hi)[1]:.0f}"
    else:
        while hi - lo > 1:  # invariant: at(hi) fits the budget
            mid = (lo + hi) // 2
            if at(mid)[1] <= target_bits:
                hi = mid
            else:
                lo = mid
        crf = lo if at(lo)[1] <= target_bits else hi
        note = None
    recs, bits = at(crf)
    out = {"name": "h264", "crf": crf, "bits_per_clip": bits, "recs": recs}
    if note:
        out["note"] = note
    return out
