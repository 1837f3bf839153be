"""The demo's embedded data: nothing is downloaded, everything comes from installed packages.

    summary = write_embedded_data("runs/demo/data", EmbeddedConfig(), log=print)

* images: the photos scikit-image ships (`skimage.data`), each with a caption written here; several
  square crops of each (the first is the centre crop of the whole photo), as PNG + same-stem .txt;
* video: 9-frame clips (8 fps) made from those photos by panning and zooming (H.264 MP4 + .txt),
  captioned with the motion ("a slow zoom into the cat's face");
* speech: the captions spoken by eSpeak NG (`unitok.data.speech`) in a few voices, WAV +
  transcripts.tsv; where eSpeak NG cannot be loaded, no speech (one line says why);
* text.jsonl: the English prose of Python's `pydoc_data.topics` in documents of ~1,500 characters.

These are inputs `unitok pretokenize` reads (folders with captions, and a JSONL manifest).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["Photo", "PHOTOS", "MOTIONS", "EmbeddedConfig", "write_embedded_data", "load_photo", "make_clip",
           "pydoc_documents"]


@dataclass(frozen=True)
class Photo:
    name: str  # skimage.data function
    caption: str
    subject: str  # what pans cross ("the cat")
    focus: tuple[float, float]  # (x, y) as fractions of width and height: where zooms end
    focus_name: str  # what zooms end on ("the cat's face")
    flip: bool = True  # mirrored crops allowed (not for pictures of writing)


PHOTOS = (
    Photo("chelsea", "a tabby cat with green eyes looking into the camera", "the cat", (0.49, 0.55),
          "the cat's face"),
    Photo("astronaut", "an astronaut in an orange suit smiling beside a flag and a model of the space shuttle",
          "the astronaut", (0.42, 0.2), "the astronaut's face"),
    Photo("coffee", "a cup of coffee on a red saucer with a spoon, on a wooden table", "the coffee cup",
          (0.45, 0.35), "the cup"),
    Photo("rocket", "a white rocket on the launch pad between two towers in the evening", "the launch pad",
          (0.5, 0.5), "the rocket"),
    Photo("camera", "a black and white photo of a man looking through a camera on a tripod", "the cameraman",
          (0.52, 0.22), "the camera"),
    Photo("stereo_motorcycle", "a red motorcycle parked in a garage full of shelves", "the motorcycle",
          (0.55, 0.55), "the engine of the motorcycle"),
    Photo("hubble_deep_field", "thousands of small galaxies scattered across the black sky", "the deep sky",
          (0.5, 0.5), "a few distant galaxies"),
    Photo("retina", "the orange back of a human eye with red blood vessels, on black", "the eye", (0.2, 0.46),
          "the optic disc"),
    Photo("immunohistochemistry", "stained tissue under a microscope, brown cells on a pale blue background",
          "the tissue", (0.7, 0.25), "a cluster of brown cells"),
    Photo("horse", "a black silhouette of a horse on a white background", "the horse", (0.85, 0.2),
          "the horse's head"),
    Photo("coins", "rows of old coins on a dark background", "the coins", (0.5, 0.5), "the middle row of coins"),
    Photo("moon", "the grey surface of the moon with a few small craters", "the surface of the moon", (0.23, 0.18),
          "a small crater"),
    Photo("brick", "a grey brick wall seen at an angle", "the brick wall", (0.5, 0.5), "the bricks"),
    Photo("grass", "a black and white close-up of grass", "the grass", (0.5, 0.5), "the blades of grass"),
    Photo("gravel", "a close-up of grey gravel", "the gravel", (0.5, 0.5), "the small stones"),
    Photo("colorwheel", "a colour wheel with every hue around a white centre, on black", "the colour wheel",
          (0.5, 0.5), "the white centre"),
    Photo("page", "a printed page about region-based segmentation", "the page", (0.3, 0.15), "the title",
          flip=False),
    Photo("text", "handwritten equations on a sheet of paper", "the equations", (0.5, 0.5), "one equation",
          flip=False),
    Photo("logo", "the scikit-image logo, an orange snake on a green and orange disc", "the logo", (0.45, 0.4),
          "the snake's head", flip=False),
)

# motion -> caption template (fields of Photo)
MOTIONS = {
    "zoom-in": "a slow zoom into {focus_name}",
    "zoom-out": "a slow zoom out from {focus_name}",
    "pan-right": "the camera pans from left to right across {subject}",
    "pan-down": "the camera pans down over {subject}",
}

VOICES = ("en-us", "en-us+f3", "en-us+m3", "en-us+f2")


@dataclass
class EmbeddedConfig:
    photos: int = len(PHOTOS)  # the first n of PHOTOS
    crops: int = 6  # square crops per photo (the first: the centre crop of the whole photo)
    crop_px: int = 128  # side of the stored crops (pretokenization resizes them to its image_size)
    motions: list[str] = field(default_factory=lambda: list(MOTIONS))
    clip_px: int = 64  # side of the clips' frames
    clip_frames: int = 9  # what the video tokenizer takes (1 + 4k)
    clip_fps: float = 8.0
    voices_per_sentence: int = 2  # captions are spoken this many times (voices and speeds vary)
    speech: bool = True  # False: no speech (as when eSpeak NG is missing)
    pydoc_chars: int = 300_000  # English prose of the pydoc topics, from the first topic on
    seed: int = 0


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as (H, W, 3) uint8 RGB (grey and binary pictures expanded)."""
    from skimage import data

    a = getattr(data, name)()
    if isinstance(a, tuple):  # stereo_motorcycle: (left, right, disparity)
        a = a[0]
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def _box(img: np.ndarray, box: tuple[float, float, float], px: int) -> np.ndarray:
    """Square crop of side s centred at (cx, cy) (pixels, kept inside the image), resized to px."""
    from PIL import Image

    H, W = img.shape[:2]
    cx, cy, s = box
    s = min(s, H, W)
    x0 = min(max(cx - s / 2, 0), W - s)
    y0 = min(max(cy - s / 2, 0), H - s)
    im = Image.fromarray(img).resize((px, px), Image.BICUBIC, box=(x0, y0, x0 + s, y0 + s))
    return np.asarray(im)


def square_crops(img: np.ndarray, n: int, px: int, rng: random.Random, flip: bool) -> list[np.ndarray]:
    """n square crops of px pixels: the centre crop of the whole photo, then random ones covering 55-100%
    of the shorter side (mirrored half of the time where allowed)."""
    H, W = img.shape[:2]
    side = min(H, W)
    out = [_box(img, (W / 2, H / 2, side), px)]
    for _ in range(n - 1):
        s = side * rng.uniform(0.55, 1.0)
        c = _box(img, (rng.uniform(s / 2, W - s / 2), rng.uniform(s / 2, H - s / 2), s), px)
        out.append(c[:, ::-1].copy() if flip and rng.random() < 0.5 else c)
    return out


def make_clip(img: np.ndarray, motion: str, focus: tuple[float, float], frames: int = 9, px: int = 64) -> np.ndarray:
    """(frames, px, px, 3) uint8: a square window moving over the photo (zoom in or out of `focus`,
    a pan left to right or top to bottom), smoothly (ease in and out)."""
    H, W = img.shape[:2]
    side = min(H, W)
    fx, fy = focus[0] * W, focus[1] * H
    wide, tight = (W / 2, H / 2, side), (fx, fy, 0.5 * side)
    s = 0.6 * side
    a, b = {"zoom-in": (wide, tight), "zoom-out": (tight, wide),
            "pan-right": ((s / 2, fy, s), (W - s / 2, fy, s)),
            "pan-down": ((fx, s / 2, s), (fx, H - s / 2, s))}[motion]
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        t = 0.5 - 0.5 * np.cos(np.pi * t)  # ease in and out
        if motion.startswith("zoom"):  # zoom geometrically (constant apparent speed)
            size = a[2] * (b[2] / a[2]) ** t
        else:
            size = a[2]
        out.append(_box(img, (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, size), px))
    return np.stack(out)


def pydoc_documents(chars: int, doc_chars: int = 1500) -> list[str]:
    """The first `chars` characters of the pydoc topics (sorted by name), in documents of whole
    paragraphs of about `doc_chars` characters."""
    from pydoc_data.topics import topics

    docs, cur, total = [], [], 0
    for k in sorted(topics):
        for para in topics[k].split("\n\n"):
            if total >= chars:
                break
            cur.append(para)
            total += len(para) + 2
            if sum(len(p) + 2 for p in cur) >= doc_chars:
                docs.append("\n\n".join(cur).strip())
                cur = []
    if cur:
        docs.append("\n\n".join(cur).strip())
    return [d for d in docs if d]


def write_embedded_data(out, cfg: EmbeddedConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Write OUT/images, OUT/video, OUT/speech (unless eSpeak NG is unavailable) and OUT/text.jsonl.
    Returns a summary (counts, what each file shows; `speech_error` where there is no speech);
    OUT/index.json holds the same."""
    from PIL import Image

    from unitok.data.media import write_video

    cfg = cfg or EmbeddedConfig()
    out = Path(out)
    rng = random.Random(cfg.seed)
    photos = PHOTOS[: cfg.photos]
    index: dict = {"images": [], "video": [], "speech": [], "text_documents": 0, "speech_error": None}

    d = out / "images"
    d.mkdir(parents=True, exist_ok=True)
    for p in photos:
        img = load_photo(p.name)
        for k, c in enumerate(square_crops(img, cfg.crops, cfg.crop_px, rng, p.flip)):
            f = d / f"{p.name}_{k}.png"
            Image.fromarray(c).save(f)
            f.with_suffix(".txt").write_text(p.caption + "\n")
            index["images"].append({"file": str(f.relative_to(out)), "photo": p.name, "caption": p.caption,
                                    "centre": k == 0})

    d = out / "video"
    d.mkdir(parents=True, exist_ok=True)
    for p in photos:
        img = load_photo(p.name)
        for m in cfg.motions:
            clip = make_clip(img, m, p.focus, cfg.clip_frames, cfg.clip_px)
            f = write_video(d / f"{p.name}_{m}", clip, cfg.clip_fps)
            caption = MOTIONS[m].format(subject=p.subject, focus_name=p.focus_name)
            f.with_suffix(".txt").write_text(caption + "\n")
            index["video"].append({"file": str(f.relative_to(out)), "photo": p.name, "motion": m, "caption": caption})

    sentences = [p.caption for p in photos] + [v["caption"] for v in index["video"]]
    if cfg.speech:
        index["speech_error"] = _write_speech(out / "speech", sentences, cfg, rng, index)
    else:
        index["speech_error"] = "speech switched off"
    if index["speech_error"]:
        log(f"data: no speech: {index['speech_error']}; continuing without audio")

    docs = pydoc_documents(cfg.pydoc_chars)
    with open(out / "text.jsonl", "w") as fh:
        for t in docs:
            fh.write(json.dumps({"segments": [{"text": t}]}) + "\n")
    index["text_documents"] = len(docs)
    index["text_chars"] = sum(len(t) for t in docs)
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _write_speech(d: Path, sentences: list[str], cfg: EmbeddedConfig, rng: random.Random, index: dict) -> str | None:
    """Speak every sentence (captions `voices_per_sentence` times); returns why there is no speech, or None."""
    import soundfile as sf

    from unitok.data.speech import Espeak, SpeechUnavailable

    try:
        tts = Espeak()
    except SpeechUnavailable as e:
        return str(e)
    d.mkdir(parents=True, exist_ok=True)
    lines, n = [], 0
    for i, s in enumerate(sentences):
        for k in range(cfg.voices_per_sentence):
            voice = VOICES[(i + k) % len(VOICES)]
            rate = rng.choice((145, 160, 175))
            try:
                pcm, sr = tts.say(s, voice=voice, rate=rate)
            except SpeechUnavailable as e:
                return str(e)
            f = d / f"s{n:04d}.wav"
            sf.write(f, pcm, sr, subtype="PCM_16")
            lines.append(f"{f.name}\t{s}")
            index["speech"].append({"file": str(Path(d.name) / f.name), "text": s, "voice": voice, "rate": rate,
                                    "seconds": round(len(pcm) / sr, 3)})
            n += 1
    (d / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return None
