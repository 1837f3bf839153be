"""Scenes: a CPU-sized multimodal task with exact ground truth, made to judge generation.

    unitok data scenes --out data/scenes --n 2000 --seed 0
    summary = write_scenes("data/scenes", ScenesConfig(n=2000), log=print)

* images: 1-3 flat objects (4 shapes, 8 named colours, 2 sizes, one per cell of a 3x3 grid) on a grey
  textured background (smooth noise, stripes or checks), with a caption that describes the whole
  picture in one of eight templates ("a small red circle at the top left", "two blue squares",
  "a pink diamond above a brown triangle");
* clips: one object moving left, right, up or down, slowly or quickly ("a red circle moves left slowly"),
  for video continuation (the first `prompt_frames` frames are the prompt);
* speech: the image captions spoken by eSpeak NG (`unitok.data.speech`) in many voices, rates and
  pitches, stored at 16 kHz (where eSpeak NG cannot be loaded: no speech, one line says why).

The caption language is small and closed: `describe` writes it, `parse_caption` reads it back (None
for text outside it) and `jsgf` hands it to the speech judge (`unitok.bench.judges`).

Splits: `train`, `seen` (new renders of what training has) and `held_out`. Held out of training:
four colour-shape combinations (HELD_OUT_PAIRS; each colour and each shape is still seen with the
others), two templates that recombine training phrases (HELD_OUT_TEMPLATES), and some voices
(HELD_OUT_VOICES). An item records why it is held out (`reason`: combination, template or voice).

Layout (what `unitok pretokenize` reads: folders of media with captions.tsv / transcripts.tsv):
    DIR/scenes.json                    config, vocabulary, what is held out, counts, and every item with
                                       its ground truth (objects and their pixels, motion, voice) and split
    DIR/{train,seen,held_out}/images/  PNG + captions.tsv
    DIR/{train,seen,held_out}/video/   MP4 (H.264; GIF where PyAV cannot write it) + captions.tsv
    DIR/{train,seen,held_out}/speech/  16 kHz 16-bit WAV + transcripts.tsv
The same seed and options give the same files, from a fresh process: eSpeak NG keeps state from one
utterance to the next, so a recording also depends on what the process said before.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from unitok.errors import ConfigError, DataError, read_json

__all__ = ["COLOURS", "SHAPES", "SIZES", "POSITIONS", "NUMBERS", "RELATIONS", "DIRECTIONS", "SPEEDS", "TEMPLATES",
           "HELD_OUT_TEMPLATES", "HELD_OUT_PAIRS", "VOICES", "HELD_OUT_VOICES", "SPLITS", "Obj", "Said", "Claim",
           "ScenesConfig", "describe", "claim_of", "parse_caption", "jsgf", "draw_shape", "render", "write_scenes",
           "load_scenes", "run_cli"]

FORMAT = "unitok-scenes/1"
SPLITS = ("train", "seen", "held_out")
COLOURS = {  # name -> RGB; saturated, so that the grey background never passes for an object
    "red": (215, 40, 40), "orange": (245, 135, 20), "yellow": (235, 215, 35), "green": (40, 165, 65),
    "blue": (45, 95, 225), "purple": (135, 60, 195), "pink": (245, 125, 195), "brown": (125, 75, 35)}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.42, "large": 0.75}  # object side as a fraction of a grid cell
POSITIONS = {(0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
             (1, 0): "on the left", (1, 1): "in the middle", (1, 2): "on the right",
             (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right"}  # (row, col)
NUMBERS = {2: "two", 3: "three"}
RELATIONS = {"left_of": "to the left of", "above": "above"}  # objects[0] RELATION objects[1]
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) in pixels
SPEEDS = {"slowly": 1 / 40, "quickly": 1 / 20}  # pixels per frame as a fraction of the frame side
TEMPLATES = {  # name -> an example
    "single": "a small red circle at the top left",
    "plain": "a red circle at the top left",
    "count": "two blue squares",
    "pair": "a red circle and a blue square",
    "left_of": "a red circle to the left of a blue square",
    "above": "a red circle above a blue square",
    "pair_at": "a red circle at the top left and a blue square at the bottom",  # held out
    "count_size": "two small blue squares",  # held out
}
HELD_OUT_TEMPLATES = ("pair_at", "count_size")  # only phrases the training templates use, recombined
HELD_OUT_PAIRS = (("green", "triangle"), ("blue", "diamond"), ("orange", "circle"), ("purple", "square"))
# eSpeak NG voices (language + variant), all heard by the speech judge with a word error rate of a few
# percent at most (docs/judges.md); voices it mishears (en-us+whisper, en-us+zac, en-029) are left out.
VOICES = ("en-us", "en-us+m1", "en-us+m2", "en-us+m3", "en-us+m4", "en-us+m5", "en-us+m6", "en-us+f1",
          "en-us+f2", "en-us+f5", "en-us+klatt", "en-us+klatt2", "en-us+klatt3", "en-us+klatt4", "en-us+Alex",
          "en-us+adam", "en-us+benjamin", "en-us+caleb", "en-us+ed", "en-us+max", "en-us+paul", "en-us+victor")
HELD_OUT_VOICES = ("en-us+m7", "en-us+robert", "en-us+croak", "en-gb-x-rp", "en-gb-scotland")
TEXTURES = ("noise", "stripes", "checks")
_KIND = {"image": 1, "clip": 2, "speech": 3}  # seeds each item's generator: [seed, kind, index]


@dataclass(frozen=True)
class Obj:
    """An object as drawn: centre (x, y) and side in pixels; (row, col) its cell of the 3x3 grid."""
    colour: str
    shape: str
    size: str
    row: int
    col: int
    x: float
    y: float
    side: float


@dataclass(frozen=True)
class Said:
    """What a caption states about one object (size and cell only when it names them)."""
    colour: str
    shape: str
    size: str | None = None
    cell: tuple[int, int] | None = None


@dataclass(frozen=True)
class Claim:
    """What a caption states: its objects, a relation between the first two, a clip's motion."""
    objects: tuple[Said, ...]
    relation: str | None = None  # "left_of" or "above": objects[0] is so placed against objects[1]
    motion: tuple[str, str] | None = None  # (direction, speed) of a clip's object


@dataclass
class ScenesConfig:
    n: int = 2000  # images
    clips: int | None = None  # default n // 4
    speech: int | None = None  # recordings of the first images' captions; default n // 2
    px: int = 64  # image and frame side
    frames: int = 9  # frames per clip (the video tokenizer takes 1 + 4k)
    prompt_frames: int = 5  # the first frames of a clip are the prompt of video continuation
    fps: float = 8.0
    seen_fraction: float = 0.1
    held_out_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        self.clips = self.n // 4 if self.clips is None else self.clips
        self.speech = self.n // 2 if self.speech is None else self.speech
        for k in ("n", "clips", "speech"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k} must be >= 0 (got {getattr(self, k)})")
        if self.n + self.clips == 0:
            raise ConfigError("nothing to write: --n and --clips are both 0")
        if self.speech > self.n:
            raise ConfigError(f"speech ({self.speech}) speaks image captions: at most --n ({self.n})")
        if self.px < 24:
            raise ConfigError(f"px must be >= 24 (got {self.px}): a small object would be a few pixels")
        room = (self.px * (1 - SIZES["large"] / 3) - 2) / (SPEEDS["quickly"] * self.px)  # steps a quick object can make
        if self.frames > room + 1:
            raise ConfigError(f"frames must be <= {int(room) + 1} at {self.px} px (got {self.frames}): a quick object "
                              "would leave the frame")
        if not 2 <= self.prompt_frames < self.frames:
            raise ConfigError(f"prompt_frames must be in [2, frames) (got {self.prompt_frames}, frames {self.frames})")
        if not (0 <= self.seen_fraction and 0 <= self.held_out_fraction and self.seen_fraction
                + self.held_out_fraction < 1):
            raise ConfigError("seen_fraction and held_out_fraction must be >= 0 and leave room for training")


# ------------------------------------------------------------------ the caption language
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(colour: str, shape: str, size: str | None = None) -> str:
    words = ([size] if size else []) + [colour, shape]
    return f"{_article(words[0])} {' '.join(words)}"


def describe(template: str, objects: list[Obj], motion: tuple[str, str] | None = None) -> str:
    """The caption of a scene in a template of TEMPLATES (objects in the template's order), or of a clip
    (template "motion": one object and its (direction, speed))."""
    a = objects[0]
    pos = [POSITIONS.get((o.row, o.col)) for o in objects]  # clips have no cell
    if template == "motion":
        return f"{_phrase(a.colour, a.shape)} moves {motion[0]} {motion[1]}"
    if template == "single":
        return f"{_phrase(a.colour, a.shape, a.size)} {pos[0]}"
    if template == "plain":
        return f"{_phrase(a.colour, a.shape)} {pos[0]}"
    if template in ("count", "count_size"):
        size = f"{a.size} " if template == "count_size" else ""
        return f"{NUMBERS[len(objects)]} {size}{a.colour} {a.shape}s"
    b = objects[1]
    if template == "pair":
        return f"{_phrase(a.colour, a.shape)} and {_phrase(b.colour, b.shape)}"
    if template == "pair_at":
        return f"{_phrase(a.colour, a.shape)} {pos[0]} and {_phrase(b.colour, b.shape)} {pos[1]}"
    if template in RELATIONS:
        return f"{_phrase(a.colour, a.shape)} {RELATIONS[template]} {_phrase(b.colour, b.shape)}"
    raise ValueError(f"unknown template {template!r}")


def claim_of(template: str, objects: list[Obj], motion: tuple[str, str] | None = None) -> Claim:
    """What `describe(template, objects, motion)` states (parse_caption of that caption returns it)."""
    sized = template in ("single", "count_size")
    placed = template in ("single", "plain", "pair_at")
    said = tuple(Said(o.colour, o.shape, o.size if sized else None, (o.row, o.col) if placed else None)
                 for o in objects)
    return Claim(said, template if template in RELATIONS else None, motion if template == "motion" else None)


def _alt(words) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))  # longest first: "at the top left"


_OBJ = rf"(?:a|an) (?:({_alt(SIZES)}) )?({_alt(COLOURS)}) ({_alt(SHAPES)})"
_POS = rf"(?: ({_alt(POSITIONS.values())}))?"
_CELL = {v: k for k, v in POSITIONS.items()}
_FORMS = {
    "objects": re.compile(rf"{_OBJ}{_POS}(?: and {_OBJ}{_POS})?"),
    "count": re.compile(rf"({_alt(NUMBERS.values())}) (?:({_alt(SIZES)}) )?({_alt(COLOURS)}) ({_alt(SHAPES)})s"),
    "relation": re.compile(rf"{_OBJ} ({_alt(RELATIONS.values())}) {_OBJ}"),
    "motion": re.compile(rf"{_OBJ} moves ({_alt(DIRECTIONS)}) ({_alt(SPEEDS)})"),
}


def parse_caption(text: str) -> Claim | None:
    """What a caption of the scenes language states, or None for text outside it. Case, punctuation and
    spacing are ignored; "a" and "an" are not told apart."""
    t = " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())
    if m := _FORMS["objects"].fullmatch(t):
        g = m.groups()
        objs = [Said(g[i + 1], g[i + 2], g[i], _CELL.get(g[i + 3])) for i in (0, 4) if g[i + 1]]
        return Claim(tuple(objs))
    if m := _FORMS["count"].fullmatch(t):
        num, size, colour, shape = m.groups()
        n = {v: k for k, v in NUMBERS.items()}[num]
        return Claim(tuple(Said(colour, shape, size) for _ in range(n)))
    if m := _FORMS["relation"].fullmatch(t):
        g = m.groups()
        rel = {v: k for k, v in RELATIONS.items()}[g[3]]
        return Claim((Said(g[1], g[2], g[0]), Said(g[5], g[6], g[4])), rel)
    if m := _FORMS["motion"].fullmatch(t):
        g = m.groups()
        return Claim((Said(g[1], g[2], g[0]),), motion=(g[3], g[4]))
    return None


def jsgf() -> str:
    """The image captions' language as a JSGF grammar (articles as written: "an orange", "a small")."""
    vowel = [c for c in COLOURS if _article(c) == "an"]
    obj = [f"a <size> <colour> <shape>", f"a ({' | '.join(c for c in COLOURS if c not in vowel)}) <shape>"]
    obj += [f"an ({' | '.join(vowel)}) <shape>"] if vowel else []
    return "\n".join([
        "#JSGF V1.0;", "grammar scenes;",
        "public <caption> = <object> [<position>] [and <object> [<position>]] | <number> [<size>] <colour> <shapes>"
        " | <object> <relation> <object>;",
        f"<object> = {' | '.join(obj)};",
        f"<size> = {' | '.join(SIZES)};",
        f"<colour> = {' | '.join(COLOURS)};",
        f"<shape> = {' | '.join(SHAPES)};",
        f"<shapes> = {' | '.join(s + 's' for s in SHAPES)};",
        f"<position> = {' | '.join(POSITIONS.values())};",
        f"<number> = {' | '.join(NUMBERS.values())};",
        f"<relation> = {' | '.join(RELATIONS.values())};", ""])


# ------------------------------------------------------------------ drawing
_SS = 4  # supersampling: objects are drawn 4x larger and box-filtered, so edges are antialiased


def draw_shape(draw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Draw `shape` filling box (x0, y0, x1, y1) on a PIL ImageDraw: circle (ellipse), square, triangle
    (apex up), diamond (corners at the edges' midpoints)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _background(px: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(px, px) float grey texture around a random level, and its description."""
    from PIL import Image

    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    grey, amp = float(rng.uniform(95, 165)), float(rng.uniform(10, 28))
    y, x = (np.mgrid[0:px, 0:px] + 0.5) / px
    if kind == "noise":  # smooth: a 5x5 grid of random levels, bicubic
        coarse = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse, mode="F").resize((px, px), Image.BICUBIC))
        t = t / max(float(np.abs(t).max()), 1e-6)
    elif kind == "stripes":
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 6), rng.uniform(0, 2 * np.pi)
        t = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    else:
        k = int(rng.choice([4, 8]))
        t = (((x * k).astype(int) + (y * k).astype(int)) % 2) * 2.0 - 1
    return np.clip(grey + amp * t, 0, 255), {"texture": kind, "grey": round(grey, 1), "contrast": round(amp, 1)}


def render(objects: list[Obj], background: np.ndarray) -> np.ndarray:
    """(px, px, 3) uint8: the objects over a (px, px) grey background, antialiased."""
    from PIL import Image, ImageDraw

    px = background.shape[0]
    colour = Image.new("RGB", (px * _SS, px * _SS))  # premultiplied: the colours on black
    alpha = Image.new("L", (px * _SS, px * _SS))
    dc, da = ImageDraw.Draw(colour), ImageDraw.Draw(alpha)
    for o in objects:
        h = o.side / 2
        box = tuple(v * _SS for v in (o.x - h, o.y - h, o.x + h, o.y + h))
        draw_shape(dc, o.shape, box, COLOURS[o.colour])
        draw_shape(da, o.shape, box, 255)
    c = np.asarray(colour.reduce(_SS), np.float64)
    a = np.asarray(alpha.reduce(_SS), np.float64)[..., None] / 255
    return np.clip(np.round(background[..., None] * (1 - a) + c), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ sampling scenes
def _pairs(held_out: bool) -> list[tuple[str, str]]:
    if held_out:
        return list(HELD_OUT_PAIRS)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _split(rng: np.random.Generator, cfg: ScenesConfig) -> str:
    u = rng.random()
    return "held_out" if u < cfg.held_out_fraction else "seen" if u < cfg.held_out_fraction + cfg.seen_fraction \
        else "train"


def _place(rng: np.random.Generator, pairs: list, sizes: list[str], cells: list, px: int) -> list[Obj]:
    """Objects of (colour, shape) `pairs` and `sizes` in `cells`, jittered inside their cells."""
    cell = px / 3
    out = []
    for (colour, shape), size, (r, c) in zip(pairs, sizes, cells):
        side = SIZES[size] * cell
        j = max(0.0, (cell - side) / 2 - 1)  # the object stays inside its cell, 1 px from the border
        x, y = (c + 0.5) * cell + rng.uniform(-j, j), (r + 0.5) * cell + rng.uniform(-j, j)
        out.append(Obj(colour, shape, size, r, c, round(float(x), 2), round(float(y), 2), round(side, 2)))
    return out


def _scene(rng: np.random.Generator, template: str, held_pair: bool, px: int) -> list[Obj]:
    """Objects for a template; with held_pair the first object is a held-out combination."""
    seen = _pairs(False)
    first = _pick(rng, _pairs(held_pair))
    cells = [(r, c) for r in range(3) for c in range(3)]
    if template in ("single", "plain"):
        n, pairs = 1, [first]
    elif template in ("count", "count_size"):
        n = int(rng.integers(2, 4))
        pairs = [first] * n
    else:
        n, second = 2, _pick(rng, [p for p in seen if p != first])
        pairs = [first, second]
    if template == "left_of":  # the first cell strictly left of the second
        a = _pick(rng, [p for p in cells if p[1] < 2])
        chosen = [a, _pick(rng, [p for p in cells if p[1] > a[1]])]
    elif template == "above":
        a = _pick(rng, [p for p in cells if p[0] < 2])
        chosen = [a, _pick(rng, [p for p in cells if p[0] > a[0]])]
    else:
        chosen = [cells[i] for i in rng.permutation(len(cells))[:n]]
    if template.startswith("count"):
        sizes = [_pick(rng, list(SIZES))] * n
    else:
        sizes = [_pick(rng, list(SIZES)) for _ in range(n)]
    return _place(rng, pairs, sizes, chosen, px)


def _image_item(i: int, cfg: ScenesConfig) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, _KIND["image"], i])
    split = _split(rng, cfg)
    reason = None
    seen_templates = [t for t in TEMPLATES if t not in HELD_OUT_TEMPLATES]
    if split == "held_out":
        reason = _pick(rng, ["combination", "template"])
    template = _pick(rng, list(HELD_OUT_TEMPLATES) if reason == "template" else seen_templates)
    objects = _scene(rng, template, reason == "combination", cfg.px)
    bg, bg_info = _background(cfg.px, rng)
    item = {"id": f"i{i:05d}", "kind": "image", "split": split, "reason": reason, "template": template,
            "caption": describe(template, objects), "objects": [asdict(o) for o in objects], "background": bg_info}
    return item, render(objects, bg)


def _clip_item(i: int, cfg: ScenesConfig) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, _KIND["clip"], i])
    split = _split(rng, cfg)
    colour, shape = _pick(rng, _pairs(split == "held_out"))
    size, direction, speed = _pick(rng, list(SIZES)), _pick(rng, list(DIRECTIONS)), _pick(rng, list(SPEEDS))
    side = SIZES[size] * cfg.px / 3
    step = SPEEDS[speed] * cfg.px
    travel = step * (cfg.frames - 1)
    lo, hi = side / 2 + 1, cfg.px - side / 2 - 1  # the object stays whole inside the frame
    dx, dy = DIRECTIONS[direction]
    start = []
    for d in (dx, dy):  # along the motion, room for the whole travel; across it, anywhere
        a, b = (lo + travel, hi) if d < 0 else (lo, hi - travel) if d > 0 else (lo, hi)
        start.append(float(rng.uniform(a, b)))
    bg, bg_info = _background(cfg.px, rng)
    track = [(start[0] + dx * step * t, start[1] + dy * step * t) for t in range(cfg.frames)]
    frames = np.stack([render([Obj(colour, shape, size, -1, -1, x, y, side)], bg) for x, y in track])
    o = Obj(colour, shape, size, -1, -1, round(start[0], 2), round(start[1], 2), round(side, 2))
    item = {"id": f"c{i:05d}", "kind": "clip", "split": split, "reason": "combination" if split == "held_out" else None,
            "template": "motion", "caption": describe("motion", [o], (direction, speed)),
            "object": {"colour": colour, "shape": shape, "size": size, "side": round(side, 2)},
            "direction": direction, "speed": speed, "track": [[round(x, 2), round(y, 2)] for x, y in track],
            "frames": cfg.frames, "prompt_frames": cfg.prompt_frames, "fps": cfg.fps, "background": bg_info}
    return item, frames


def _speech_item(i: int, image: dict, cfg: ScenesConfig) -> dict:
    """Who says image i's caption, how fast, how high. Training captions get training voices; a seen
    caption gets a held-out voice half of the time (then the recording is held out); a held-out caption
    any voice."""
    rng = np.random.default_rng([cfg.seed, _KIND["speech"], i])
    split = image["split"]
    if split == "train":
        voice = _pick(rng, VOICES)
    elif split == "seen":
        voice = _pick(rng, HELD_OUT_VOICES if rng.random() < 0.5 else VOICES)
    else:
        voice = _pick(rng, VOICES + HELD_OUT_VOICES)
    held_voice = voice in HELD_OUT_VOICES
    reason = image["reason"] or ("voice" if held_voice else None)
    return {"id": f"s{i:05d}", "kind": "speech", "split": "held_out" if held_voice else split, "reason": reason,
            "template": image["template"], "caption": image["caption"], "image": image["id"], "voice": voice,
            "voice_held_out": held_voice, "rate": int(rng.integers(130, 181)), "pitch": int(rng.integers(35, 66))}


# ------------------------------------------------------------------ writing and reading
def write_scenes(out, cfg: ScenesConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Write the data set into OUT (which must be empty or new) and OUT/scenes.json; returns the summary
    (scenes.json without the items)."""
    from PIL import Image

    from unitok.data.media import write_video

    cfg = cfg or ScenesConfig()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} exists and is not an empty folder; scenes are written into a new one")
    items, tsv = [], {}

    def put(split: str, kind: str, name: str, caption: str) -> Path:
        d = out / split / kind
        d.mkdir(parents=True, exist_ok=True)
        tsv.setdefault(d, []).append(f"{name}\t{caption}")
        return d

    images = []
    for i in range(cfg.n):
        item, img = _image_item(i, cfg)
        f = put(item["split"], "images", f"{item['id']}.png", item["caption"]) / f"{item['id']}.png"
        Image.fromarray(img).save(f)
        item["file"] = str(f.relative_to(out))
        images.append(item)
    for i in range(cfg.clips):
        item, frames = _clip_item(i, cfg)
        d = out / item["split"] / "video"
        d.mkdir(parents=True, exist_ok=True)
        f = write_video(d / item["id"], frames, cfg.fps)
        put(item["split"], "video", f.name, item["caption"])
        item["file"] = str(f.relative_to(out))
        items.append(item)
    speech = [_speech_item(i, images[i], cfg) for i in range(cfg.speech)]
    error = _speak(out, speech, put) if speech else None
    if error:
        log(f"scenes: no speech: {error}")
        speech = []
    items = images + items + speech
    for d, lines in tsv.items():
        if d.is_dir():
            (d / ("transcripts.tsv" if d.name == "speech" else "captions.tsv")).write_text("\n".join(lines) + "\n")
    counts = {s: {k: sum(1 for it in items if it["split"] == s and it["kind"] == k) for k in _KIND} for s in SPLITS}
    summary = {"format": FORMAT, "config": asdict(cfg),
               "vocabulary": {"colours": COLOURS, "shapes": list(SHAPES), "sizes": SIZES,
                              "positions": {f"{r},{c}": p for (r, c), p in POSITIONS.items()},
                              "templates": TEMPLATES, "directions": list(DIRECTIONS), "speeds": SPEEDS},
               "held_out": {"pairs": [list(p) for p in HELD_OUT_PAIRS], "templates": list(HELD_OUT_TEMPLATES),
                            "voices": list(HELD_OUT_VOICES)},
               "voices": list(VOICES), "counts": counts, "speech_error": error}
    (out / "scenes.json").write_text(json.dumps({**summary, "items": items}, indent=None) + "\n")
    return summary


def _speak(out: Path, speech: list[dict], put) -> str | None:
    """Render every recording (16 kHz WAV); returns why there is no speech, or None."""
    import soundfile as sf
    import torch

    from unitok.data.audio import resample
    from unitok.data.speech import Espeak, SpeechUnavailable

    try:
        tts = Espeak()
        for it in speech:
            pcm, sr = tts.say(it["caption"], voice=it["voice"], rate=it["rate"], pitch=it["pitch"],
                              seed=int(it["id"][1:]))
            wav = resample(torch.from_numpy(pcm.astype(np.float32) / 32768), sr, 16000).numpy()
            f = put(it["split"], "speech", f"{it['id']}.wav", it["caption"]) / f"{it['id']}.wav"
            sf.write(f, np.clip(wav, -1, 1), 16000, subtype="PCM_16")
            it["file"], it["seconds"] = str(f.relative_to(out)), round(len(wav) / 16000, 3)
    except SpeechUnavailable as e:
        for d in out.glob("*/speech"):
            shutil.rmtree(d)
        return str(e)
    return None


def load_scenes(path) -> dict:
    """scenes.json of a folder written by write_scenes (DataError when it is missing or not one)."""
    f = Path(path) / "scenes.json"
    if not f.is_file():
        raise DataError(f"{path}: no scenes.json (write the data with `unitok data scenes --out {path}`)")
    data = read_json(f, "scenes.json")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{f}: not a {FORMAT} file")
    return data


def run_cli(args) -> int:
    cfg = ScenesConfig(n=args.n, clips=args.clips, speech=args.speech, px=args.px, frames=args.frames,
                       prompt_frames=args.prompt_frames, seed=args.seed)
    s = write_scenes(args.out, cfg)
    for split, c in s["counts"].items():
        print(f"{split:9s} {c['image']:6d} images {c['clip']:6d} clips {c['speech']:6d} recordings")
    print(f"-> {args.out} (ground truth and splits in {Path(args.out) / 'scenes.json'})")
    return 0
