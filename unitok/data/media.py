"""Media file helpers shared by the tokenizer trainers and benchmarks.

* `list_media(dir, kind)`: files of one kind under a folder (recursive, sorted), by extension.
* `SkipLog`: counts and remembers files that could not be read (never fatal), with one summary line.
* `read_image(path)`: RGB uint8 array (H, W, 3); grayscale/palette/alpha converted; DataError if unreadable.
* `read_video(path, max_frames, stride)`: RGB uint8 array (T, H, W, 3) via PyAV; DataError if unreadable
  or over its limits (frames, frames x pixels: checked against the header before decoding).
* `to_tensor(img)` / `to_uint8(x)`: uint8 HWC <-> float CHW in [-1, 1].
* `save_grid(rows, path)`: rows of uint8 images written as one PNG grid.
* `write_video(stem, frames, fps)`: (T, H, W, 3) uint8 frames written as STEM.mp4 (H.264), or STEM.gif.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unitok.errors import DataError

__all__ = ["IMAGE_EXTS", "MIN_IMAGE_SIDE", "VIDEO_EXTS", "AUDIO_EXTS", "list_media", "SkipLog", "read_image", "read_video",
           "to_tensor", "to_uint8", "save_grid", "write_video"]

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".gif"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif"}
_KINDS = {"image": IMAGE_EXTS, "video": VIDEO_EXTS, "audio": AUDIO_EXTS}


def list_media(directory: str | Path, kind: str, skips: "SkipLog | None" = None) -> list[Path]:
    """Files of `kind` under `directory` (recursive, sorted). Other files are recorded in `skips`."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"data directory not found: {d}")
    exts = _KINDS[kind]
    out = []
    for p in sorted(d.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        if p.suffix.lower() in exts:
            out.append(p)
        elif skips is not None:
            skips.add(p, f"not {'an' if kind[0] in 'aeiou' else 'a'} {kind} file")
    return out


@dataclass
class SkipLog:
    """Files skipped because they could not be read; `summary()` is one printable line."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.items.append((str(path), reason))

    @property
    def count(self) -> int:
        return len(self.items)

    def summary(self, limit: int = 3) -> str:
        if not self.items:
            return "skipped 0 files"
        shown = "; ".join(f"{Path(p).name}: {r}" for p, r in self.items[:limit])
        more = f"; ... {self.count - limit} more" if self.count > limit else ""
        return f"skipped {self.count} unreadable file(s): {shown}{more}"


MIN_IMAGE_SIDE = 16  # smaller images are skipped by the benchmarks and pretokenization (a user mistake)


def read_image(path: str | Path, min_side: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Raises DataError for anything Pillow cannot decode or smaller than
    `min_side` pixels a side."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im.convert("RGBA"))
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({str(e)[:120]})") from None
    if arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise DataError(f"{path}: empty image")
    if min(arr.shape[:2]) < min_side:
        raise DataError(f"{path}: too small ({arr.shape[1]}x{arr.shape[0]} px; at least {min_side} px a side)")
    return arr


def read_video(path, max_frames: int | None = None, stride: int = 1, fps: float | None = None,
               name: str | None = None, max_pixels: int | None = None, refuse_longer: bool = False) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames: every `stride`-th, or with `fps` one frame per 1/fps seconds (the
    first at or after each tick), at most `max_frames` (with `refuse_longer`, a longer video is refused
    instead of cut); `max_pixels` bounds frames x width x height. The limits are checked against the
    container's header before decoding, and again while decoding (a header may understate the length
    or say nothing). `path` may be a file object (`name` for messages). DataError if unreadable or
    over a limit."""
    import av

    name = name or str(path)
    at = f" at {fps:g} fps" if fps else ""
    frames, tick, pixels = [], 0.0, 0
    try:
        with av.open(path if hasattr(path, "read") else str(path)) as c:
            stream = c.streams.video[0]
            n = _stated_frames(c, stream, stride, fps)
            if refuse_longer and n is not None and n > max_frames:
                raise DataError(f"{name}: video of {n:,} frames{at} > max_video_frames {max_frames:,} "
                                "(refused before decoding)")
            n = max(n or 0, 1)  # an unknown length: one frame here, the rest while decoding
            n = n if max_frames is None else min(n, max_frames)
            W, H = stream.codec_context.width, stream.codec_context.height
            if max_pixels is not None and n * W * H > max_pixels:
                raise DataError(f"{name}: {n:,} frames of {W}x{H} px > max_video_pixels {max_pixels:,} "
                                "(refused before decoding)")
            for i, fr in enumerate(c.decode(stream)):
                if fps is None:
                    if i % stride:
                        continue
                else:
                    t = float(fr.pts * stream.time_base) if fr.pts is not None else tick
                    if t + 1e-6 < tick:
                        continue
                    tick += 1.0 / fps
                if max_frames is not None and len(frames) == max_frames:  # only with refuse_longer
                    raise DataError(f"{name}: video of more than {max_frames:,} frames{at} > max_video_frames "
                                    "(stopped decoding at the limit)")
                pixels += fr.width * fr.height
                if max_pixels is not None and pixels > max_pixels:
                    raise DataError(f"{name}: frames of more than {max_pixels:,} px in all > max_video_pixels "
                                    "(stopped decoding at the limit)")
                frames.append(fr.to_ndarray(format="rgb24"))
                if not refuse_longer and max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as e:
        raise DataError(f"{name}: unreadable video ({str(e)[:120]})") from None
    if not frames:
        raise DataError(f"{name}: no video frames")
    return np.stack(frames)


def _stated_frames(c, stream, stride: int, fps: float | None) -> int | None:
    """The number of frames read_video would keep according to the container's header (its duration,
    frame count and frame rate); None when the header says neither (e.g. a raw H.264 stream)."""
    rate = float(stream.average_rate or 0)
    seconds = (float(stream.duration * stream.time_base) if stream.duration
               else c.duration / 1e6 if c.duration  # microseconds
               else stream.frames / rate if stream.frames and rate else None)
    native = stream.frames or (int(seconds * rate) if seconds and rate else None)
    if fps is None:
        return -(-native // stride) if native else None
    if seconds is None:
        return None
    return min(int(seconds * fps), native) if native else int(seconds * fps)  # int: a border case is left to decoding


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.array(img, dtype=np.float32)).div_(127.5).sub_(1.0)
    return t.movedim(-1, -3)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) (clamped, rounded)."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.movedim(-3, -1).cpu().numpy()


def save_grid(rows: list[list[np.ndarray]], path: str | Path, pad: int = 2) -> Path:
    """Save rows of equally sized uint8 (H, W, 3) images as one PNG (white padding)."""
    from PIL import Image

    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = im[:h, :w]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(p)
    return p


def write_video(stem, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> STEM.mp4 (H.264 via PyAV), or STEM.gif where that fails (e.g. odd sizes,
    which yuv420p cannot hold). Returns the path written."""
    from fractions import Fraction

    stem = Path(stem)
    mp4 = stem.with_suffix(".mp4")
    try:
        import av

        T, H, W, _ = frames.shape
        with av.open(str(mp4), "w") as box:
            st = box.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            st.width, st.height, st.pix_fmt = W, H, "yuv420p"
            st.options = {"crf": "18"}
            for f in frames:
                for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    box.mux(pkt)
            for pkt in st.encode():
                box.mux(pkt)
        return mp4
    except Exception:  # PyAV without an H.264 encoder, odd frame sizes: a GIF always works
        mp4.unlink(missing_ok=True)
    from PIL import Image

    gif = stem.with_suffix(".gif")
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(gif, save_all=True, append_images=ims[1:], duration=round(1000 / fps), loop=0)
    return gif
