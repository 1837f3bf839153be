"""Judges of the scenes task (`unitok.data.scenes`): offline, exact on the data's own renders, no training.

    from unitok.bench.judges import find_objects, judge_image, caption_accuracy, judge_motion, SpeechJudge
    objs = find_objects(img)                                # [Found(colour, shape, size, row, col, ...)]
    checks = judge_image(img, parse_caption("two blue squares"))   # {"object": True, ..., "overall": True}
    acc = caption_accuracy("a red circle at the top", truth)        # image-to-text: share of true statements
    direction, speed = judge_motion(frames)                # "left" / "right" / "up" / "down", or None
    text = SpeechJudge().transcribe(wav, sr)                # a caption of the scenes language, or ""

Image judge: pixels whose chroma (max - min over RGB) exceeds SAT_MIN of their brightness are objects
(backgrounds are grey), split into 4-connected components. A component's colour is the named colour
nearest to the median of its more saturated half (edges are mixed with the background); its coverage
per pixel is its chroma over the core's. For each shape, the box with the component's area and centroid
is drawn as the renderer draws it, and the best soft overlap names the shape; that box gives the size
(small or large by the midpoint of the two sizes) and the cell (its centre). `judge_image` checks a
caption's statements GenEval-style on the best assignment of stated to found objects: object (every
stated shape is there), count (as many objects as stated), colour (each stated object has its colour),
size, position (cells and relations; a relation needs the centres a twelfth of the width apart) and
overall (every check that applies).

Video judge: the largest object of each frame, its centre tracked; the least-squares velocity gives the
direction (its dominant axis) and the speed (`quickly` above the midpoint of the two speeds); below a
quarter of the slow speed the object is still (None).

Speech judge: pocketsphinx 5 (its bundled US-English acoustic model and dictionary, 16 kHz) searching
the finite-state grammar of the image captions (`unitok.data.scenes.jsgf`), not its language model:
chosen by measurement (docs/judges.md: free decoding with its LM misrecognises most scene captions). The
audio is brought to 16 kHz and a fixed loudness, framed by 0.25 s on each side, and a fixed noise floor is
added: the acoustic model was trained on recordings with one, and on eSpeak's digital silence and abrupt
ends the search loses the last word. When the best path still does not end a caption, the best complete
caption among the lattice's best paths is taken. It hears only the scenes language: whatever is said, the
transcript is the closest caption of that language (or "" when the search finds no complete caption), so
off-language speech is scored by the words it happens to share. `SpeechJudge(grammar=False)` decodes
freely with pocketsphinx's bundled US-English language model instead (any English speech, far less
accurately: WER 0.92 / 0.67 on raw / prepared scene captions), for `unitok tokenizer bench`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from unitok.data.scenes import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS, Claim, draw_shape, jsgf, parse_caption

__all__ = ["SAT_MIN", "Found", "find_objects", "judge_image", "caption_accuracy", "judge_motion", "SpeechJudge"]

SAT_MIN = 0.3  # object pixels: (max - min) / max over RGB; backgrounds are grey (0), the colours >= 0.47
_MAX_FOUND = 8  # the largest components an assignment considers


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    size: str
    row: int
    col: int
    x: float  # centre of the fitted box, pixels
    y: float
    side: float  # of the fitted shape's box
    area: int


_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}  # area / box area
_DROP = {"triangle": 1 / 6}  # box centre = centroid - DROP * side (a triangle's centroid is low)


def _soft(shape: str, x: float, y: float, side: float, h: int, w: int) -> np.ndarray:
    """(h, w) coverage in [0, 1] of `shape` in a box of `side` centred at (x, y), as the renderer draws
    it (4x supersampled)."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (w * 4, h * 4))
    r = side / 2
    draw_shape(ImageDraw.Draw(im), shape, tuple(v * 4 for v in (x - r, y - r, x + r, y + r)), 255)
    return np.asarray(im.reduce(4), np.float32) / 255


def find_objects(img: np.ndarray) -> list[Found]:
    """The objects of an (H, W, 3) uint8 image, largest first."""
    from scipy import ndimage

    a = img[..., :3].astype(np.float32)
    mx = a.max(-1)
    chroma = mx - a.min(-1)  # a colour over grey: chroma = coverage x the colour's own chroma
    mask = (chroma > SAT_MIN * np.maximum(mx, 1)) & (mx > 50)  # very dark pixels have no reliable hue
    labels, _ = ndimage.label(mask)
    H, W = mask.shape
    cell = min(H, W) / 3
    min_area = 0.3 * 0.5 * (SIZES["small"] * cell) ** 2  # a third of the smallest triangle
    size_cut = (SIZES["small"] + SIZES["large"]) / 2 * cell
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], np.float32)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), 1):
        m = labels[sl] == k
        if int(m.sum()) < min_area:
            continue
        c = chroma[sl][m]
        core = c >= np.median(c)  # edges are mixed with the background
        rgb = np.median(a[sl][m][core], axis=0)
        colour = names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]
        # coverage of each pixel of the box and a 1-pixel rim (partly covered pixels fall below the mask)
        y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
        win = (slice(y0, min(sl[0].stop + 1, H)), slice(x0, min(sl[1].stop + 1, W)))
        cover = np.clip(chroma[win] / np.median(c[core]), 0, 1) * np.isin(labels[win], (0, k))
        mass = float(cover.sum())
        yy, xx = np.mgrid[win[0], win[1]] + 0.5
        cx, cy = float((cover * xx).sum() / mass), float((cover * yy).sum() / mass)
        best = None
        for shape in SHAPES:  # each shape's box from the mass (area) and centroid; the best overlap wins
            side = float(np.sqrt(mass / _FILL[shape]))
            y = cy - _DROP.get(shape, 0) * side
            t = _soft(shape, cx - x0, y - y0, side, *cover.shape)
            score = float(np.minimum(t, cover).sum() / max(np.maximum(t, cover).sum(), 1e-6))
            if best is None or score > best[0]:
                best = (score, shape, side, y)
        _, shape, side, y = best
        row, col = (min(max(int(v * 3 / n), 0), 2) for v, n in ((y, H), (cx, W)))
        out.append(Found(colour, shape, "large" if side > size_cut else "small", row, col, cx, y, round(side, 2),
                         int(m.sum())))
    return sorted(out, key=lambda f: -f.area)


def _holds(relation: str | None, a, b, margin: float) -> bool:
    if relation == "left_of":
        return a.x < b.x - margin
    if relation == "above":
        return a.y < b.y - margin
    return True


def _assign(said, cands, score):
    """The injective assignment of `said` items to candidates (None: unassigned) maximising the sum of
    score(said_item, candidate_or_None) (ties: the first in order)."""
    n = len(cands)
    best, best_s = None, -1.0
    for p in permutations(range(n + len(said)), len(said)):
        m = [cands[i] if i < n else None for i in p]
        s = sum(score(a, c) for a, c in zip(said, m))
        if s > best_s:
            best, best_s = m, s
    return best


def _agree(a, f) -> float:
    """How many statements about object `a` (Said) candidate `f` (Found or Obj) satisfies."""
    if f is None:
        return 0.0
    return ((a.shape == f.shape) + (a.shape == f.shape and a.colour == f.colour)
            + (a.size is not None and a.size == f.size) + (a.cell is not None and a.cell == (f.row, f.col)))


def judge_image(img: np.ndarray, claim: Claim) -> dict:
    """GenEval-style checks of a caption's statements on an image: object, count, colour, size, position
    (None where the caption states no size / no position) and overall."""
    found = find_objects(img)
    said = claim.objects
    m = _assign(said, found[:_MAX_FOUND], _agree)
    ok = lambda f, a: f is not None and f.shape == a.shape  # noqa: E731
    checks = {"object": all(ok(f, a) for f, a in zip(m, said)),
              "count": len(found) == len(said),
              "colour": all(ok(f, a) and f.colour == a.colour for f, a in zip(m, said))}
    sized = [(f, a) for f, a in zip(m, said) if a.size is not None]
    checks["size"] = all(f is not None and f.size == a.size for f, a in sized) if sized else None
    placed = [(f, a) for f, a in zip(m, said) if a.cell is not None]
    if placed or claim.relation:
        margin = img.shape[1] / 12
        checks["position"] = (all(f is not None and (f.row, f.col) == a.cell for f, a in placed)
                              and (not claim.relation or (None not in m[:2] and _holds(claim.relation, *m[:2], margin))))
    else:
        checks["position"] = None
    checks["overall"] = all(v for v in checks.values() if v is not None)
    return checks


def caption_accuracy(text: str, truth: list, width: float) -> float:
    """Image-to-text: the share of a caption's statements that hold for the true objects (Obj, or dicts of
    Obj's fields; `width` the image side) — the count, each true object's colour and shape (wrong when the
    caption misses the object), each stated object's size and cell, a stated relation; a caption outside
    the scenes language scores 0. Any template may describe the picture: only what it states is scored."""
    from unitok.data.scenes import Obj, parse_caption

    claim = parse_caption(text)
    if claim is None:
        return 0.0
    objs = [o if isinstance(o, Obj) else Obj(**o) for o in truth]
    said = claim.objects
    m = _assign(said, objs, _agree)
    right = [len(said) == len(objs)]
    for o in objs:  # each true object: its colour and shape stated?
        a = next((a for a, f in zip(said, m) if f is o), None)
        right += [a is not None and a.colour == o.colour, a is not None and a.shape == o.shape]
    for a, f in zip(said, m):
        if f is None:  # a stated object that is not there
            right += [False, False]
            continue
        right += [a.size == f.size] if a.size is not None else []
        right += [a.cell == (f.row, f.col)] if a.cell is not None else []
    if claim.relation:
        right.append(None not in m[:2] and _holds(claim.relation, *m[:2], width / 12))
    return sum(right) / len(right)


def judge_motion(frames: np.ndarray) -> tuple[str | None, str | None]:
    """(T, H, W, 3) uint8 -> (direction, speed) of the largest object, or (None, None) when it is still or
    found in fewer than two frames."""
    t, pts = [], []
    for i, f in enumerate(frames):
        objs = find_objects(f)
        if objs:
            t.append(i)
            pts.append((objs[0].x, objs[0].y))
    if len(t) < 2:
        return None, None
    t = np.asarray(t, np.float64)
    v = np.polyfit(t, np.asarray(pts), 1)[0]  # (vx, vy) pixels per frame
    W = frames.shape[2]
    slow, fast = SPEEDS["slowly"] * W, SPEEDS["quickly"] * W
    if np.abs(v).max() < slow / 4:
        return None, None
    axis = int(np.argmax(np.abs(v)))
    step = [0, 0]
    step[axis] = int(np.sign(v[axis]))
    direction = next(d for d, s in DIRECTIONS.items() if list(s) == step)
    return direction, "quickly" if np.hypot(*v) > (slow + fast) / 2 else "slowly"


class SpeechJudge:
    """Transcribes speech into the scenes caption language (see the module docstring), or with
    grammar=False into any English words of pocketsphinx's language model. One decoder per instance;
    not thread-safe."""

    RATE = 16000  # the bundled acoustic model's only rate
    PAD_SECONDS = 0.25
    NOISE = 100 / 32768  # the noise floor's standard deviation (about -50 dB below full scale)
    LOUDNESS = 0.08  # RMS the speech is scaled to (eSpeak's own renders are 0.05-0.2)
    NBEST = 100  # lattice paths searched for a complete caption when the best path is not one

    def __init__(self, grammar: bool = True):
        try:
            from pocketsphinx import Decoder
        except ImportError:
            from unitok.errors import UnitokError

            raise UnitokError("the speech judge needs pocketsphinx (pip install pocketsphinx)") from None
        self.grammar = grammar
        if not grammar:
            self.decoder = Decoder(loglevel="ERROR")  # the wheel's en-us language model
            return
        self.decoder = Decoder(lm=None, loglevel="ERROR")
        self.decoder.add_jsgf_string("scenes", jsgf())
        self.decoder.activate_search("scenes")

    def prepare(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """(N,) or (C, N) float in [-1, 1] (or int16) at `sr` -> the int16 16 kHz signal the decoder reads."""
        import torch

        from unitok.data.audio import resample

        x = np.asarray(wav)
        x = x.astype(np.float32) / 32768 if x.dtype == np.int16 else x.astype(np.float32)
        if x.ndim == 2:
            x = x.mean(0)
        x = resample(torch.from_numpy(np.ascontiguousarray(x)), sr, self.RATE).numpy()
        rms = float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0
        if rms > 0:
            x = x * (self.LOUDNESS / rms)
        pad = np.zeros(int(self.PAD_SECONDS * self.RATE), np.float32)
        x = np.concatenate([pad, x, pad])
        x = x + np.random.default_rng(0).normal(0, self.NOISE, len(x)).astype(np.float32)  # same noise each call
        return (np.clip(x, -1, 1) * 32767).astype(np.int16)

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        d = self.decoder
        d.start_utt()
        d.process_raw(self.prepare(wav, sr).tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if self.grammar and parse_caption(text) is None:  # the search ended inside a caption: the best complete one
            paths = (h.hypstr for h, _ in zip(d.nbest(), range(self.NBEST)) if h is not None)
            text = next((p for p in paths if parse_caption(p)), text)
        return text
