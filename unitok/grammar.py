"""What may follow a prefix of ids: the grammar of the unified vocabulary, for constrained decoding.

    g = SpanGrammar(vocab)
    st = g.start()              # outside any span, after <bos>
    for t in prompt_ids[1:]:
        st.push(t)              # ValueError for an id the grammar does not allow there
    ranges = st.allowed()       # [(lo, hi), ...] half-open id ranges allowed next
    ranges = st.fitting(ranges, room)   # ... of which a span can still end within `room` tokens
    mask = g.mask(ranges)       # (V,) bool, for logits.masked_fill(~mask, -inf)

The rules follow `UnifiedVocab.pack` and the vocabulary's span layout (`vocab.spans`; by default
`UNITOK_SPANS`): outside a span, text ids, <eos> and the begin marker of every media modality the
vocabulary has; a span with a header (image <boi> <size:H> <size:W>, video <bov> <size:T> <size:H>
<size:W>), or with a fixed grid and no header (Chameleon's image), then takes exactly the grid's size
x levels codes (position-major, level-minor: each position takes its level's range in turn), then
its end marker; an open span (audio <boa>) takes
codes frame by frame (level-minor), and its end marker only at a frame boundary after at least one
frame. A span whose header is written as text (Emu3's image: <|image start|> "H*W" <|image token|>)
takes each size as decimal digits (no leading zero) closed by the separator, the last one by the body
marker; its row marker follows each row of codes, its `codes_end` marker the last row. So every span
a sampler can produce decodes to a whole grid or whole frames. Where an imported vocabulary has its
markers and codes among its text ids, those ids are not text.

Two restrictions serve tasks (`unitok.generation.pipeline`): `SpanGrammar(vocab, spans=())` opens no
media span outside spans (text and <eos> only; a prefix given to `start` may still hold spans), and
`GrammarState.frames` makes the open (audio) span exactly that many frames long (its end then, not before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["SpanGrammar", "GrammarState"]


@dataclass
class GrammarState:
    grammar: "SpanGrammar"
    modality: str | None = None  # the open span's modality; None outside spans
    sizes: list[int] = field(default_factory=list)  # header sizes read so far
    codes: int = 0  # codes read in the open span
    ended: bool = False  # after <eos>
    frames: int | None = None  # the open span's length in frames (None: it may end at any frame boundary)
    number: str = ""  # digits of the size being written as text
    rows: int = 0  # row markers read in the open span
    codes_ended: bool = False  # its codes_end marker read

    # ------------------------------------------------------------ queries
    def expected_codes(self) -> int | None:
        """Codes the span being read needs in total (None: an open span without `frames`; or the header
        is incomplete)."""
        g, m = self.grammar, self.modality
        if m in g.open and self.frames is not None:
            return self.frames * g.levels[m]
        if m is None or m in g.open or len(self.sizes) < g.header[m]:
            return None
        n = g.levels[m] * g.cells[m]
        for s in self.sizes:
            n *= s
        return n

    def allowed(self) -> list[tuple[int, int]]:
        g, v = self.grammar, self.grammar.vocab
        if self.ended:
            return []
        m = self.modality
        if m is None:
            return g.free
        if len(self.sizes) < g.header[m]:
            if m not in g.text_sizes:
                return [(v.size_start, v.size_start + v.max_size)]
            digits = g.text_sizes[m][:10]
            close = g.text_sizes[m][10] if len(self.sizes) + 1 < g.header[m] else g.body[m]  # separator, or body
            first = digits[0 if self.number else 1:]  # no leading zero
            return _merge([(d, d + 1) for d in first] + [(close, close + 1)] * bool(self.number))
        level = self.codes % g.levels[m]
        code = [v.code_range(m, level)]
        if m in g.open and self.frames is None:
            return code + ([g.end[m]] if self.codes and level == 0 else [])
        if m in g.row_end and self.codes and self.codes % self._row() == 0 and self.rows < self.codes // self._row():
            return [(g.row_end[m], g.row_end[m] + 1)]
        if self.codes < self.expected_codes():
            return code
        return [(g.codes_end[m], g.codes_end[m] + 1)] if m in g.codes_end and not self.codes_ended else [g.end[m]]

    def _row(self) -> int:
        """Codes in a row of the open span (the grid's last axis, all levels)."""
        g, m = self.grammar, self.modality
        return g.levels[m] * (self.sizes[-1] if g.header[m] else self.grammar.vocab.spans[m].sizes[-1])

    def closing(self) -> list[tuple[int, int]]:
        """The ids allowed next on the shortest way out of the open span (a budget ran out): the end
        marker as soon as the grammar allows it, else what `allowed` says."""
        ranges = self.allowed()
        if self.modality is not None:
            end = self.grammar.end[self.modality]
            if end in ranges:
                return [end]
        return ranges

    def fitting(self, ranges: list[tuple[int, int]], room: int) -> list[tuple[int, int]]:
        """`ranges` (from `allowed` or `closing`) less the ids after which the open span, or a span
        this id opens, could not end within `room` more tokens (this one included): begin markers
        whose shortest span is longer, header sizes whose grid would be too large, and a new frame of
        an open span without room for it and the end marker. A sampler that keeps to them never runs out of context
        inside a span."""
        g, v, m = self.grammar, self.grammar.vocab, self.modality
        if room < 1:
            return []
        if m is None:  # a span opened now needs its marker, header, one position of codes and its end
            too_long = [b for b, mb in g.begin_of.items() if g.shortest[mb] > room]
            return _cut(ranges, [(b, b + 1) for b in too_long])
        levels = g.levels[m]
        if len(self.sizes) < g.header[m] and m in g.text_sizes:  # the digits after which the grid cannot fit
            later = g.header[m] - len(self.sizes) - 1  # sizes after this one, of 1 at least
            digits = g.text_sizes[m][:10]
            too_big = [(d, d + 1) for k, d in enumerate(digits)
                       if 1 + 2 * later + 1 + g.after_header(m, [*self.sizes, int(self.number + str(k)), *[1] * later])
                       > room]
            return _cut(ranges, too_big)
        if len(self.sizes) < g.header[m]:  # this size token, the sizes after it (>= 1 each), the codes, the end
            grid = levels
            for n in self.sizes:
                grid *= n
            most = (room - 2 - (g.header[m] - len(self.sizes) - 1)) // grid  # largest size that fits
            return _cut(ranges, [(v.size_start + max(most, 0), v.size_start + v.max_size)])
        if m in g.open and self.codes % levels == 0 and levels + 1 > room:  # no room for a frame and the end
            return _cut(ranges, [v.code_range(m, 0)])
        return ranges

    def allows(self, t: int) -> bool:
        return any(lo <= t < hi for lo, hi in self.allowed())

    # ------------------------------------------------------------ transitions
    def push(self, t: int) -> "GrammarState":
        g, v = self.grammar, self.grammar.vocab
        t = int(t)
        if not self.allows(t):
            raise ValueError(f"{v.token_name(t)} is not allowed here ({self.describe()})")
        m = self.modality
        if m is None:
            if t == v.eos:
                self.ended = True
            elif t in g.begin_of:
                self.modality, self.sizes, self.codes = g.begin_of[t], [], 0
        elif len(self.sizes) < g.header[m]:
            if m not in g.text_sizes:
                self.sizes.append(t - v.size_start + 1)
            elif t in g.text_sizes[m][:10]:
                self.number += str(g.text_sizes[m].index(t))
            else:  # the separator, or the body marker after the last size
                self.sizes.append(int(self.number))
                self.number = ""
        elif t == g.end[m][0]:
            self.modality, self.frames, self.rows, self.codes_ended = None, None, 0, False
        elif t == g.row_end.get(m):
            self.rows += 1
        elif t == g.codes_end.get(m):
            self.codes_ended = True
        else:
            self.codes += 1
        return self

    def describe(self) -> str:
        if self.ended:
            return "after <eos>"
        if self.modality is None:
            return "outside spans"
        need = self.expected_codes()
        return (f"in a {self.modality} span, header {self.sizes}, {self.codes}"
                f"{'' if need is None else f' of {need}'} codes")


class SpanGrammar:
    """`spans`: the media modalities whose spans may be opened outside a span (None: every one the
    vocabulary has; () = text and <eos> only)."""

    def __init__(self, vocab, spans=None):
        self.vocab = v = vocab
        self.levels = {m: cb.levels for m, cb in v.codebooks.items()}
        self.header = {m: len(v.spans[m].header) for m in v.codebooks}  # size tokens after the begin marker
        self.cells = {m: math.prod(v.spans[m].sizes) for m in v.codebooks}  # positions of a fixed grid (else 1)
        self.open = {m for m in v.codebooks if v.spans[m].open}  # spans that end at any frame boundary
        self.begin_of = {v.marker_ids[m][0]: m for m in v.codebooks}
        self.end = {m: (v.marker_ids[m][1], v.marker_ids[m][1] + 1) for m in v.codebooks}
        # the parts of a span written as text, and its markers inside (Emu3's); {modality: ids}
        self.text_sizes = {m: v.spans[m].size_text for m in v.codebooks if v.spans[m].size_text}
        self.body, self.row_end, self.codes_end = (
            {m: v.special[getattr(v.spans[m], k)] for m in v.codebooks if getattr(v.spans[m], k)}
            for k in ("body", "row_end", "codes_end"))
        # the fewest tokens a span takes: its marker, the smallest header, one position of codes, its end
        self.shortest = {m: 1 + (2 * self.header[m] if m in self.text_sizes else self.header[m])
                         + self.after_header(m, [1] * self.header[m]) for m in v.codebooks}
        self.spans = None if spans is None else tuple(spans)
        unknown = set(self.spans or ()) - set(v.codebooks)
        if unknown:
            raise ValueError(f"spans: this vocabulary has no {sorted(unknown)[0]} codebook")
        opens = [b for b, m in self.begin_of.items() if self.spans is None or m in self.spans]
        not_text = [(v.special[t], v.special[t] + 1) for m in v.codebooks for t in v.spans[m].markers]
        not_text += list(v.code_ranges())
        self.free = _merge(_cut([(0, v.text_size)], not_text) + [(v.eos, v.eos + 1)] + [(b, b + 1) for b in opens])

    def after_header(self, m: str, sizes: list[int]) -> int:
        """Tokens a span of `m` takes after its header, for header `sizes`: its codes (a fixed grid's
        where it has no header), its row and codes_end markers, its end marker."""
        grid = sizes or list(self.vocab.spans[m].sizes) or [1]
        rows = math.prod(grid[:-1]) if m in self.row_end else 0
        return self.levels[m] * math.prod(grid) + rows + (m in self.codes_end) + 1

    def start(self, prefix=None) -> GrammarState:
        """The state after `prefix` (ids; a leading <bos> is accepted), or at the start of a document.
        The prefix is read by the full rules (any span), what follows by this grammar's."""
        full = self if self.spans is None else SpanGrammar(self.vocab)
        st = GrammarState(full)
        ids = [] if prefix is None else [int(t) for t in prefix]
        if ids and ids[0] == self.vocab.bos:
            ids = ids[1:]
        for t in ids:
            st.push(t)
        st.grammar = self
        return st

    def mask(self, ranges: list[tuple[int, int]], device=None) -> torch.Tensor:
        m = torch.zeros(self.vocab.size, dtype=torch.bool, device=device)
        for lo, hi in ranges:
            m[lo:hi] = True
        return m


def _cut(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open `ranges` without the ids in `holes`."""
    out = list(ranges)
    for a, b in holes:
        out = [piece for lo, hi in out for piece in ((lo, min(hi, a)), (max(lo, b), hi)) if piece[0] < piece[1]]
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]
