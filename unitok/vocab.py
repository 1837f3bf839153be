"""One vocabulary for every modality.

Id layout (contiguous ranges, in this order)::

    [0, V_text)                      text ids (SentencePiece)
    specials                         <bos> <eos> <pad> <boi> <eoi> <bov> <eov> <boa> <eoa>
    size tokens                      <size:1> ... <size:max_size>
    image codebook                   one range of `size` ids per level
    video codebook                   one range per level
    audio codebook                   one range per RVQ level, so the model always
                                     knows which level it is predicting

Spans carry their own shape, so a span decodes without outside knowledge::

    image  <boi> <size:H> <size:W> codes <eoi>          codes (H, W) or (L, H, W)
    video  <bov> <size:T> <size:H> <size:W> codes <eov> codes (T, H, W) or (L, T, H, W)
    audio  <boa> codes <eoa>                            codes (L, T); frame count = n / L

That span layout is data on each vocabulary, not a rule of the code: `vocab.spans` maps each media
modality to a `SpanFormat` (begin and end marker, grid axes, the axes written as size tokens in the
header), `vocab.marker_ids` gives the markers' ids and `vocab.span_head` the ids that open a span;
the grammar, the generation pipeline, guidance, packed batches and pretokenize read them there; `vocab.id_dtype` is the token
shards' dtype. The layout above is `UNITOK_SPANS`, the default; the special tokens are <bos> <eos>
<pad> and then the begin and end marker of each span format, in modality order. A vocabulary that
describes an imported model's ids as they are (`unitok.interop`) names the text ids its special tokens
and codebooks already have (`specials` and `code_ids`, recorded as `special_ids` and `code_ids`), may
have no size tokens (`max_size` 0), and its spans may be a fixed grid without a header
(`SpanFormat.sizes`: Chameleon's image is <racm3:break>, 32 x 32 codes, <eoss>), or have their header
written as text and markers inside (Emu3's image: <|image start|> 3 2 * 3 2 <|image token|>, each row
of codes then <|extra_200|>, then <|extra_201|> <|image end|>: `size_text`, `body`, `row_end`,
`codes_end`); a span's markers (`SpanFormat.markers`) are all special tokens.

Codes are laid out position-major, level-minor: all levels of one position
(pixel of the latent grid, or audio frame) come before the next position, so a
truncated audio span is still a prefix of whole frames.

A document is a list of segments: ``{"text": str | list[int]}``,
``{"image": codes}``, ``{"video": codes}``, ``{"audio": codes}`` where codes are
integer tensors or arrays. `pack` turns it into token ids plus a modality id
per token; `unpack` reverses it and, for truncated or malformed sequences,
returns what it could decode together with a list of problems (it never raises).

The vocabulary is data: `manifest()` is a JSON-able dict with a content hash,
saved beside every token shard and LM checkpoint; `check_same` turns a
mismatch into a clear `VocabMismatchError`. The manifest records the span layout (`spans`); one
without it (written before the layout was recorded) has `UNITOK_SPANS`, and the content hash leaves
that default layout out, so such manifests keep their hash and still match a vocabulary built now.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from unitok.errors import CheckpointError, VocabMismatchError, read_json

__all__ = ["Modality", "CodebookSpec", "SpanFormat", "UNITOK_SPANS", "UnifiedVocab", "Packed", "Unpacked"]

FORMAT = "unitok-vocab/1"


class Modality(IntEnum):
    TEXT = 0
    IMAGE = 1
    VIDEO = 2
    AUDIO = 3


MEDIA = ("image", "video", "audio")
_DOCUMENT_TOKENS = ("<bos>", "<eos>", "<pad>")  # the special tokens before the span markers


@dataclass(frozen=True)
class SpanFormat:
    """How one media modality's codes sit in the id stream: `begin`, the header, the codes, `end`.

    `grid`: the axes of one level's codes (T frames, H rows, W columns), so its rank; `header`: the
    axes whose sizes follow the begin marker as size tokens; `sizes`: a fixed grid, for a model whose
    spans have no header (Chameleon: every image is 32 x 32 codes between its markers). Three kinds:
    the header is the whole grid (the span carries its shape); no header and fixed `sizes` (the span
    is always that grid); no header and a one-axis grid: an open span, whose length is its number of
    codes (audio: frames = codes / levels; it may end at any whole frame)."""

    begin: str
    end: str
    grid: tuple[str, ...]
    header: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    # Emu3's span (docs/interop.md): <|image start|> "H*W" <|image token|>, each row of codes then
    # <|extra_200|>, then <|extra_201|> <|image end|>. `size_text`: the text ids of the digits 0-9 and of
    # the separator, so the header's sizes are written as text (decimal, one id per digit, joined by the
    # separator) instead of size tokens; `body`: a marker after the header; `row_end`: a marker after
    # each row of codes (the grid's last axis); `codes_end`: a marker after the codes, before `end`.
    size_text: tuple[int, ...] = ()
    body: str = ""
    row_end: str = ""
    codes_end: str = ""

    def __post_init__(self):
        if len(set(self.markers)) < len(self.markers):
            raise ValueError(f"a span's markers must differ, got {self.markers}")
        if self.size_text:
            if not self.header or len(self.size_text) != 11 or len(set(self.size_text)) != 11 or any(
                    isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.size_text):
                raise ValueError("size_text needs a header and 11 distinct text ids: the digits 0-9, then the "
                                 f"separator; got {self.size_text}")
        if bool(self.size_text) != bool(self.body):  # the body marker is what ends a size written as text
            raise ValueError("a header written as text (size_text) and a body marker go together")
        if self.row_end and len(self.grid) < 2:
            raise ValueError(f"a row_end marker needs a grid of rows, got {self.grid}")
        if self.sizes:
            if self.header or len(self.sizes) != len(self.grid):
                raise ValueError(f"fixed span sizes {self.sizes} need no header and one size per grid axis {self.grid}")
            if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.sizes):
                raise ValueError(f"fixed span sizes must be positive integers, got {self.sizes}")
        elif not (self.header == self.grid or (not self.header and len(self.grid) == 1)):
            raise ValueError(f"span header {self.header} must be the whole grid {self.grid}, or empty for a one-axis "
                             "grid or a grid of fixed sizes")

    @property
    def open(self) -> bool:
        """No header and no fixed sizes: the end marker, not a size, closes the span."""
        return not self.header and not self.sizes

    @property
    def markers(self) -> tuple[str, ...]:
        """Its special tokens: `begin`, `end`, then those inside the span that it has."""
        return (self.begin, self.end, *(m for m in (self.body, self.row_end, self.codes_end) if m))

    def describe(self) -> str:
        """One line: `<boi> <size:H> <size:W> codes <eoi>`; Emu3's `<boi> H*W <|image token|> codes (each
        row then <|extra_200|>) <|extra_201|> <eoi>`."""
        head = ["*".join(self.header)] if self.size_text else [f"<size:{a}>" for a in self.header]
        codes = f"codes (each row then {self.row_end})" if self.row_end else "codes"
        body, tail = [self.body] if self.body else [], [self.codes_end] if self.codes_end else []
        return " ".join([self.begin, *head, *body, codes, *tail, self.end])

    def to_json(self) -> dict:
        out = {"begin": self.begin, "end": self.end, "grid": list(self.grid), "header": list(self.header)}
        # only those set: the layouts recorded before them keep their JSON and hash
        for key in ("sizes", "size_text", "body", "row_end", "codes_end"):
            if getattr(self, key):
                out[key] = list(v) if isinstance(v := getattr(self, key), tuple) else v
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SpanFormat":
        return cls(d["begin"], d["end"], tuple(d["grid"]), tuple(d["header"]), tuple(d.get("sizes", ())),
                   tuple(d.get("size_text", ())), d.get("body", ""), d.get("row_end", ""), d.get("codes_end", ""))


# unitok's own span layout, and the one of every manifest that records none.
UNITOK_SPANS: Mapping[str, SpanFormat] = MappingProxyType({
    "image": SpanFormat("<boi>", "<eoi>", grid=("H", "W"), header=("H", "W")),
    "video": SpanFormat("<bov>", "<eov>", grid=("T", "H", "W"), header=("T", "H", "W")),
    "audio": SpanFormat("<boa>", "<eoa>", grid=("T",)),
})


@dataclass(frozen=True)
class CodebookSpec:
    """One modality's codebook: `levels` ranges of `size` ids each.

    `tokenizer` identifies the tokenizer that produced the codes (type, config
    and weights hashes) so a checkpoint cannot be paired with a different one.
    """

    modality: str
    size: int
    levels: int = 1
    tokenizer: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.modality not in MEDIA:
            raise ValueError(f"codebook modality must be one of {MEDIA}, got {self.modality!r}")
        if self.size < 1 or self.levels < 1:
            raise ValueError(f"codebook size and levels must be >= 1, got {self.size}, {self.levels}")

    def to_json(self) -> dict:
        return {"size": self.size, "levels": self.levels, "tokenizer": dict(self.tokenizer)}


@dataclass
class Packed:
    """A packed document: token ids and the modality (`Modality`) of each token."""

    ids: np.ndarray  # (N,) int64
    modality: np.ndarray  # (N,) uint8

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Unpacked:
    """Segments recovered from ids, and what could not be decoded (empty when clean)."""

    segments: list[dict]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class UnifiedVocab:
    """The shared id space of text, special tokens, size tokens and media codebooks.

    `spans`: the span format of each media modality (default `UNITOK_SPANS`); every codebook needs
    one, and their markers follow <bos> <eos> <pad> as special tokens.

    `specials`: special tokens that already have an id inside the text range, {name: id}: a model
    imported from elsewhere keeps its own ids (`unitok.interop`; Llama 3's <bos> is text id 128000).
    Those ids must be distinct, except that <bos>, <eos> and <pad> may share one (Qwen separates
    documents with one token); the special tokens not named follow the text ids as usual. `max_size`
    may be 0 (no size tokens) where no span has a header.

    `code_ids`: codebooks that already have ids inside the text range, {modality: first id}: its
    levels' ranges follow one another from there (Chameleon's 8,192 image codes are its ids 4-8195).
    They must not overlap each other or a special token; the codebooks not named follow the size
    tokens as usual."""

    def __init__(
        self,
        text_size: int,
        codebooks: Mapping[str, CodebookSpec] | Iterable[CodebookSpec] = (),
        *,
        max_size: int = 1024,
        text_tokenizer: Mapping[str, Any] | None = None,
        spans: Mapping[str, SpanFormat] | None = None,
        specials: Mapping[str, int] | None = None,
        code_ids: Mapping[str, int] | None = None,
    ):
        if text_size < 0:
            raise ValueError("text_size must be >= 0")
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        books = list(codebooks.values()) if isinstance(codebooks, Mapping) else list(codebooks)
        self.codebooks: dict[str, CodebookSpec] = {}
        for cb in books:
            if cb.modality in self.codebooks:
                raise ValueError(f"two codebooks for modality {cb.modality!r}")
            self.codebooks[cb.modality] = cb
        self.text_size = text_size
        self.max_size = max_size
        self.text_tokenizer = dict(text_tokenizer or {})
        spans = UNITOK_SPANS if spans is None else spans
        unknown = set(spans) - set(MEDIA)
        if unknown:
            raise ValueError(f"span format for unknown modality {sorted(unknown)[0]!r}; expected one of {MEDIA}")
        # modality order, as the codebooks, so the special tokens do not depend on argument order
        self.spans: dict[str, SpanFormat] = {m: spans[m] for m in MEDIA if m in spans}
        missing = [m for m in self.codebooks if m not in self.spans]
        if missing:
            raise ValueError(f"no span format for the {missing[0]} codebook")
        self.special_tokens = _DOCUMENT_TOKENS + tuple(t for f in self.spans.values() for t in f.markers)
        if len(set(self.special_tokens)) < len(self.special_tokens):
            raise ValueError(f"special tokens must be distinct, got {self.special_tokens}")
        if max_size < 1 and any(f.header and not f.size_text for f in self.spans.values()):
            raise ValueError("max_size must be >= 1: a span header holds size tokens")
        self.specials = _check_specials(specials or {}, self.special_tokens, text_size)

        # the special tokens with an id of their own follow the text ids
        appended = [tok for tok in self.special_tokens if tok not in self.specials]
        self.special = {tok: self.specials[tok] if tok in self.specials else text_size + appended.index(tok)
                        for tok in self.special_tokens}
        # modality -> (begin, end) marker ids
        self.marker_ids = {m: (self.special[f.begin], self.special[f.end]) for m, f in self.spans.items()}
        self.size_start = text_size + len(appended)  # id of <size:1>
        nxt = self.size_start + max_size
        self.code_ids = _check_code_ids(code_ids or {}, self.codebooks, self.specials, text_size)
        # (modality, level) -> start id of that level's range
        self.code_start: dict[tuple[str, int], int] = {}
        for m in MEDIA:  # fixed order keeps the layout independent of argument order
            cb = self.codebooks.get(m)
            if cb is None:
                continue
            for lvl in range(cb.levels):
                if m in self.code_ids:
                    self.code_start[(m, lvl)] = self.code_ids[m] + lvl * cb.size
                else:
                    self.code_start[(m, lvl)] = nxt
                    nxt += cb.size
        self.size = nxt
        self._media_start = self.size_start + max_size
        # Lookup tables from the first code id on (the media range, or from a codebook inside the
        # text range): modality index (-1: not a code) and level of each id.
        self._code_lo = min([*self.code_start.values(), self.size])
        n_media = self.size - self._code_lo
        self._code_mod = np.full(n_media, -1, dtype=np.int8)
        self._code_lvl = np.zeros(n_media, dtype=np.int32)
        for (m, lvl), s in self.code_start.items():
            sl = slice(s - self._code_lo, s - self._code_lo + self.codebooks[m].size)
            self._code_mod[sl] = MEDIA.index(m)
            self._code_lvl[sl] = lvl
        for m, f in self.spans.items():  # a size written as text is text: not a special token, not a code
            bad = [i for i in f.size_text if not i < text_size or i in self.special.values() or self._is_code(i)]
            if bad:
                raise ValueError(f"the {m} span's size_text ids {bad} must be text ids, not special tokens or codes")

    # ------------------------------------------------------------------ ids
    @property
    def bos(self) -> int:
        return self.special["<bos>"]

    @property
    def eos(self) -> int:
        return self.special["<eos>"]

    @property
    def pad(self) -> int:
        return self.special["<pad>"]

    @property
    def id_dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every id (uint32 above 65,536 ids): token shards' dtype."""
        return np.dtype(np.uint16) if self.size <= 65536 else np.dtype(np.uint32)

    def size_token(self, n: int) -> int:
        if not 1 <= n <= self.max_size:
            raise ValueError(f"size {n} outside [1, {self.max_size}]; raise max_size")
        return self.size_start + n - 1

    def span_head(self, modality: str, sizes: Iterable[int] = ()) -> list[int]:
        """The ids that open a span: its begin marker and a size token per header axis (`sizes`, in
        the order of `spans[modality].header`; none for an open span, and for a span of fixed sizes,
        whose `sizes` may be given: they must be those)."""
        sizes, fmt = list(sizes), self.spans[modality]
        if fmt.sizes:
            if sizes and tuple(sizes) != fmt.sizes:
                raise ValueError(f"{modality} spans of this vocabulary are a fixed grid {fmt.sizes}, got {tuple(sizes)}")
            sizes = []
        if len(sizes) != len(fmt.header):
            raise ValueError(f"a {modality} span header holds {len(fmt.header)} sizes {fmt.header}, got {sizes}")
        head = [self.marker_ids[modality][0]]
        if fmt.size_text:  # each size in decimal digits, the sizes joined by the separator
            *digits, sep = fmt.size_text
            for k, n in enumerate(sizes):
                if isinstance(n, bool) or int(n) != n or n < 1:
                    raise ValueError(f"size {n} is not a positive integer")
                head += [sep] * (k > 0) + [digits[int(c)] for c in str(int(n))]
        else:
            head += [self.size_token(n) for n in sizes]
        return head + ([self.special[fmt.body]] if fmt.body else [])

    def _is_code(self, i: int) -> bool:
        k = i - self._code_lo
        return 0 <= k < len(self._code_mod) and self._code_mod[k] >= 0

    def code_range(self, modality: str, level: int = 0) -> tuple[int, int]:
        """[start, end) ids of one level of a modality's codebook."""
        s = self.code_start[(modality, level)]
        return s, s + self.codebooks[modality].size

    def code_ranges(self) -> list[tuple[int, int]]:
        """[start, end) ids of every level of every codebook."""
        return [self.code_range(m, lvl) for m, lvl in self.code_start]

    def token_name(self, i: int) -> str:
        """Human-readable name of an id, for debugging and error messages."""
        i = int(i)
        for tok, j in self.special.items():
            if i == j:
                return tok
        k = i - self._code_lo
        if 0 <= k < len(self._code_mod) and self._code_mod[k] >= 0:  # before text: codes may sit inside it
            m = MEDIA[self._code_mod[k]]
            lvl = int(self._code_lvl[k])
            return f"{m}:L{lvl}:{i - self.code_start[(m, lvl)]}"
        if 0 <= i < self.text_size:
            return f"text:{i}"
        if self.size_start <= i < self._media_start:
            return f"<size:{i - self.size_start + 1}>"
        return f"<invalid:{i}>"

    # ----------------------------------------------------------------- pack
    def pack(self, document: Iterable[Mapping[str, Any]], *, text_tokenizer=None, bos: bool = True, eos: bool = True) -> Packed:
        """Pack a list of segments into ids and per-token modality ids.

        Text may be a string (needs `text_tokenizer`, anything with
        `encode(str) -> list[int]`) or a list of text ids."""
        ids: list[np.ndarray] = []
        mods: list[np.ndarray] = []

        def emit(arr, modality):
            arr = np.asarray(arr, dtype=np.int64).reshape(-1)
            ids.append(arr)
            mods.append(np.full(arr.shape, int(modality), dtype=np.uint8))

        if bos:
            emit([self.bos], Modality.TEXT)
        for n, seg in enumerate(document):
            if not isinstance(seg, Mapping) or len(seg) != 1:
                raise ValueError(f"segment {n}: expected a one-key dict like {{'text': ...}}, got {seg!r:.80}")
            (kind, value), = seg.items()
            if kind == "text":
                emit(self._text_ids(value, text_tokenizer, n), Modality.TEXT)
            elif kind in MEDIA:
                emit(self._span_ids(kind, value, n), Modality[kind.upper()])
            else:
                raise ValueError(f"segment {n}: unknown segment kind {kind!r}; expected text, image, video or audio")
        if eos:
            emit([self.eos], Modality.TEXT)
        if not ids:
            return Packed(np.zeros(0, np.int64), np.zeros(0, np.uint8))
        return Packed(np.concatenate(ids), np.concatenate(mods))

    def _text_ids(self, value, text_tokenizer, n) -> np.ndarray:
        if isinstance(value, str):
            if text_tokenizer is None:
                raise ValueError(f"segment {n}: text given as a string but no text_tokenizer was passed")
            value = text_tokenizer.encode(value)
        arr = np.asarray(value, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.text_size):
            raise ValueError(f"segment {n}: text id out of range [0, {self.text_size})")
        return arr

    def _span_ids(self, modality: str, codes, n) -> np.ndarray:
        cb = self.codebooks.get(modality)
        if cb is None:
            raise ValueError(f"segment {n}: this vocabulary has no {modality} codebook")
        arr = _as_int_array(codes, f"segment {n} ({modality})")
        fmt = self.spans[modality]
        if cb.levels == 1 and arr.ndim == len(fmt.grid):
            arr = arr[None]
        if arr.ndim != len(fmt.grid) + 1 or arr.shape[0] != cb.levels:
            axes = ", ".join(fmt.grid)
            want = f"({cb.levels}, {axes})" if fmt.open else f"({axes})" if cb.levels == 1 else f"({cb.levels}, ...)"
            raise ValueError(f"segment {n}: {modality} codes must have shape {want}, got {tuple(arr.shape)}")
        grid = arr.shape[1:]
        if fmt.sizes and tuple(grid) != fmt.sizes:
            raise ValueError(f"segment {n}: {modality} spans of this vocabulary are a fixed grid {fmt.sizes}, "
                             f"got {tuple(grid)}")
        if fmt.header and not fmt.size_text:  # the header's size tokens hold each side
            for d in grid:
                if not 1 <= d <= self.max_size:
                    raise ValueError(f"segment {n}: {modality} grid {tuple(grid)} outside [1, {self.max_size}]; raise max_size")
        if arr.size and (arr.min() < 0 or arr.max() >= cb.size):
            raise ValueError(f"segment {n}: {modality} code out of range [0, {cb.size})")
        # (L, *grid) -> position-major, level-minor, each level shifted into its own range
        offsets = np.array([self.code_start[(modality, lvl)] for lvl in range(cb.levels)], dtype=np.int64)
        body = (arr.reshape(cb.levels, -1).T + offsets).reshape(-1)
        if fmt.row_end:  # each row (the grid's last axis, all levels) followed by the row marker
            rows = body.reshape(-1, grid[-1] * cb.levels)
            body = np.concatenate([rows, np.full((len(rows), 1), self.special[fmt.row_end])], 1).reshape(-1)
        head = self.span_head(modality, grid if fmt.header else ())
        tail = [self.special[fmt.codes_end]] if fmt.codes_end else []
        return np.concatenate([head, body, tail, [self.marker_ids[modality][1]]]).astype(np.int64)

    # --------------------------------------------------------------- unpack
    def unpack(self, ids, *, text_tokenizer=None) -> Unpacked:
        """Recover segments from ids. Never raises on bad ids: anything that cannot
        be decoded is skipped and described in `problems` (with its position).

        Text comes back as a list of ids, or a string when `text_tokenizer`
        (with `decode(list[int]) -> str`) is given. Consecutive text merges."""
        arr = _as_int_array(ids, "ids").reshape(-1) if not isinstance(ids, np.ndarray) else ids.reshape(-1).astype(np.int64)
        segments: list[dict] = []
        problems: list[str] = []
        text: list[int] = []

        def flush_text():
            if text:
                segments.append({"text": text.copy()})
                text.clear()

        begin_of = {b: m for m, (b, _) in self.marker_ids.items()}
        end_of = {e: m for m, (_, e) in self.marker_ids.items()}
        inner = {self.special[t]: t for f in self.spans.values() for t in f.markers[2:]}  # only inside a span
        skip = {self.bos, self.eos, self.pad}
        i, n = 0, len(arr)
        stray_start = None  # coalesce runs of undecodable tokens into one problem

        def stray(pos, why):
            nonlocal stray_start
            if stray_start is None:
                stray_start = (pos, why)

        def end_stray(pos):
            nonlocal stray_start
            if stray_start is not None:
                p0, why = stray_start
                span = f"position {p0}" if pos - p0 == 1 else f"positions {p0}-{pos - 1}"
                problems.append(f"{span}: {why}; skipped")
                stray_start = None

        while i < n:
            t = int(arr[i])
            # text last: an imported vocabulary's special tokens, markers and codes may be text ids
            if t in skip:
                end_stray(i)
                i += 1
            elif t in begin_of and begin_of[t] in self.codebooks:
                end_stray(i)
                flush_text()
                i = self._unpack_span(arr, i, begin_of[t], segments, problems)
            elif t in end_of or t in inner:
                stray(i, f"{self.token_name(t)} without a matching begin marker")
                i += 1
            elif 0 <= t < self.text_size and not self._is_code(t):
                end_stray(i)
                text.append(t)
                i += 1
            else:
                stray(i, f"unexpected token {self.token_name(t)} outside a span")
                i += 1
        end_stray(n)
        flush_text()
        if text_tokenizer is not None:
            for s in segments:
                if "text" in s:
                    s["text"] = text_tokenizer.decode(s["text"])
        return Unpacked(segments, problems)

    def _unpack_span(self, arr: np.ndarray, start: int, modality: str, segments: list, problems: list) -> int:
        """Decode the span beginning at `start`; return the index to resume from."""
        cb, fmt = self.codebooks[modality], self.spans[modality]
        end_tok = self.marker_ids[modality][1]
        n = len(arr)
        i = start + 1
        grid = []

        def incomplete(i):
            got = "end of sequence" if i >= n else self.token_name(arr[i])
            problems.append(f"position {start}: {modality} span header incomplete (got {got}); span skipped")
            return i

        if fmt.size_text:  # decimal digits, the sizes joined by the separator
            *digits, sep = fmt.size_text
            for k in range(len(fmt.header)):
                if k:
                    if not (i < n and arr[i] == sep):
                        return incomplete(i)
                    i += 1
                num = ""
                while i < n and int(arr[i]) in digits:
                    num += str(digits.index(int(arr[i])))
                    i += 1
                if not num or int(num) < 1:
                    return incomplete(i)
                grid.append(int(num))
        else:
            for _ in fmt.header:
                if not (i < n and self.size_start <= arr[i] < self.size_start + self.max_size):
                    return incomplete(i)
                grid.append(int(arr[i]) - self.size_start + 1)
                i += 1
        if fmt.body:
            if not (i < n and arr[i] == self.special[fmt.body]):
                return incomplete(i)
            i += 1
        # Codes: the longest run of this modality's code ids (and row markers, where it has them).
        j = i
        mi = MEDIA.index(modality)
        row_end = self.special[fmt.row_end] if fmt.row_end else None
        while j < n and (arr[j] == row_end or
                         (self._code_lo <= arr[j] < self.size and self._code_mod[arr[j] - self._code_lo] == mi)):
            j += 1
        run = arr[i:j]
        if row_end is not None:
            width = (grid or list(fmt.sizes))[-1] * cb.levels  # a row's codes, then its marker
            marks = np.flatnonzero(run == row_end)
            if len(run) % (width + 1) or not np.array_equal(marks, np.arange(width, len(run), width + 1)):
                problems.append(f"position {start}: {modality} span rows are not {width} codes each followed by "
                                f"{fmt.row_end}; span skipped")
                return j
            run = run[run != row_end]
        tail = [self.special[fmt.codes_end], end_tok] if fmt.codes_end else [end_tok]
        terminated = arr[j:j + len(tail)].tolist() == tail
        resume = j + len(tail) if terminated else j
        body = run - self._code_lo
        levels = self._code_lvl[body]
        expected_lvl = np.arange(len(body)) % cb.levels
        if np.any(levels != expected_lvl):
            k = int(np.argmax(levels != expected_lvl))
            problems.append(f"position {i + k}: {modality} code of level {levels[k]} where level {expected_lvl[k]} was expected; span skipped")
            return resume
        values = (run - np.array([self.code_start[(modality, lvl)] for lvl in range(cb.levels)])[levels]).astype(np.int64)
        if fmt.open:
            frames = len(values) // cb.levels
            if len(values) % cb.levels:
                problems.append(f"position {start}: {modality} span ends inside a frame; kept {frames} whole frames")
            if not terminated:
                problems.append(f"position {start}: {modality} span not closed by {fmt.end} (truncated?); kept {frames} frames")
            if frames == 0:
                return resume
            codes = values[: frames * cb.levels].reshape(frames, cb.levels).T
        else:
            grid = grid or list(fmt.sizes)
            want = int(np.prod(grid)) * cb.levels
            if len(values) != want:
                problems.append(
                    f"position {start}: {modality} span of grid {tuple(grid)} needs {want} codes, got {len(values)}; span skipped"
                )
                return resume
            if not terminated:
                problems.append(f"position {start}: {modality} span not closed by its end marker; kept")
            codes = values.reshape(*grid, cb.levels)
            codes = np.moveaxis(codes, -1, 0)
            if cb.levels == 1:
                codes = codes[0]
        segments.append({modality: np.ascontiguousarray(codes)})
        return resume

    # ------------------------------------------------------------- manifest
    def manifest(self) -> dict:
        body = {
            "format": FORMAT,
            "text": {"size": self.text_size, "tokenizer": self.text_tokenizer},
            "special_tokens": list(self.special_tokens),
            "spans": _spans_json(self.spans),
            "max_size": self.max_size,
            "codebooks": {m: cb.to_json() for m, cb in self.codebooks.items()},
            "ranges": self._ranges(),
            "total_size": self.size,
        }
        if self.specials:  # only then: manifests without it keep their hash
            body["special_ids"] = dict(self.specials)
        if self.code_ids:  # the same
            body["code_ids"] = dict(self.code_ids)
        return {**body, "hash": _hash(body)}

    @property
    def hash(self) -> str:
        return self.manifest()["hash"]

    def _ranges(self) -> dict:
        r = {"text": [0, self.text_size], "special": [self.text_size, self.size_start], "size": [self.size_start, self._media_start]}
        for (m, lvl), s in self.code_start.items():
            r[f"{m}/{lvl}"] = [s, s + self.codebooks[m].size]
        return r

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], *, source: str = "manifest") -> "UnifiedVocab":
        try:
            if manifest.get("format") != FORMAT:
                raise CheckpointError(f"{source}: not a unitok vocabulary manifest (format {manifest.get('format')!r})")
            body = {k: v for k, v in manifest.items() if k != "hash"}
            if manifest.get("hash") != _hash(body):
                raise CheckpointError(f"{source}: vocabulary manifest hash does not match its content (edited or corrupt)")
            spans = {m: SpanFormat.from_json(f) for m, f in manifest.get("spans", _spans_json(UNITOK_SPANS)).items()}
            books = [CodebookSpec(m, c["size"], c["levels"], c.get("tokenizer", {})) for m, c in manifest["codebooks"].items()]
            vocab = cls(manifest["text"]["size"], books, max_size=manifest["max_size"], text_tokenizer=manifest["text"].get("tokenizer"),
                        spans=spans, specials=manifest.get("special_ids"), code_ids=manifest.get("code_ids"))
            if list(manifest["special_tokens"]) != list(vocab.special_tokens):
                raise VocabMismatchError(f"{source}: special tokens {manifest['special_tokens']} differ from those of its "
                                         f"span layout {list(vocab.special_tokens)}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{source}: malformed vocabulary manifest ({type(e).__name__}: {e})") from None
        if vocab.manifest()["hash"] != manifest["hash"]:
            raise VocabMismatchError(f"{source}: manifest ranges disagree with the layout this version computes")
        return vocab

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "UnifiedVocab":
        path = Path(path)
        data = read_json(path, "vocabulary manifest")
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: vocabulary manifest must be a JSON object")
        return cls.from_manifest(data, source=str(path))

    def check_same(self, other: "UnifiedVocab | Mapping[str, Any]", what: str = "data") -> None:
        """Raise `VocabMismatchError` naming the first differences if `other` differs."""
        # a manifest without `spans` has the default layout: no difference to name there
        theirs = other.manifest() if isinstance(other, UnifiedVocab) else {"spans": _spans_json(UNITOK_SPANS), **other}
        mine = self.manifest()
        if theirs.get("hash") == mine["hash"]:
            return
        diffs = _diff(mine, theirs)
        raise VocabMismatchError(
            f"{what} was built with a different vocabulary (hash {str(theirs.get('hash'))[:12]} vs {mine['hash'][:12]}): "
            + "; ".join(diffs[:4])
            + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        )

    @classmethod
    def from_tokenizers(cls, tokenizers: Mapping[str, Any] | Iterable[Any], *, max_size: int = 1024,
                        spans: Mapping[str, SpanFormat] | None = None,
                        specials: Mapping[str, int] | None = None,
                        code_ids: Mapping[str, int] | None = None) -> "UnifiedVocab":
        """The vocabulary of any set of tokenizers (at most one text tokenizer and one per media
        modality): text ids from the text tokenizer (none without one), then one codebook range
        per media tokenizer level, each identified by the tokenizer's identity; `spans`, `specials`
        and `code_ids` as in the constructor."""
        toks = list(tokenizers.values()) if isinstance(tokenizers, Mapping) else list(tokenizers)
        text = [t for t in toks if t.modality == "text"]
        if len(text) > 1:
            raise ValueError("more than one text tokenizer")
        books = [t.codebook_spec() for t in toks if t.modality != "text"]
        return cls(text[0].vocab_size if text else 0, books, max_size=max_size,
                   text_tokenizer=text[0].identity() if text else None, spans=spans, specials=specials,
                   code_ids=code_ids)

    def check_tokenizers(self, tokenizers, what: str = "tokenizers") -> None:
        """Raise `VocabMismatchError` unless `tokenizers` build exactly this vocabulary."""
        toks = list(tokenizers.values()) if isinstance(tokenizers, Mapping) else list(tokenizers)
        placed = {m: i for m, i in self.code_ids.items() if m in {t.modality for t in toks}}  # a missing one: a difference
        UnifiedVocab.from_tokenizers(toks, max_size=self.max_size, spans=self.spans, specials=self.specials,
                                     code_ids=placed).check_same(self, what=what)

    def __repr__(self) -> str:
        books = ", ".join(f"{m}={cb.levels}x{cb.size}" for m, cb in self.codebooks.items())
        return f"UnifiedVocab(size={self.size}, text={self.text_size}, {books})"


def _check_specials(specials: Mapping[str, int], names: tuple[str, ...], text_size: int) -> dict[str, int]:
    """`specials` ({name: id} inside the text range) checked against the vocabulary's special tokens."""
    out = {}
    for name, i in specials.items():
        if name not in names:
            raise ValueError(f"special token {name!r} is not one of this vocabulary's {names}")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < text_size:
            raise ValueError(f"special token {name} must have a text id in [0, {text_size}), got {i!r}")
        out[name] = i
    markers = [i for n, i in out.items() if n not in _DOCUMENT_TOKENS]
    if len(set(markers)) < len(markers) or set(markers) & {i for n, i in out.items() if n in _DOCUMENT_TOKENS}:
        raise ValueError(f"special tokens {out} share an id (only <bos>, <eos> and <pad> may)")
    return out


def _check_code_ids(code_ids: Mapping[str, int], codebooks: Mapping[str, CodebookSpec], specials: Mapping[str, int],
                    text_size: int) -> dict[str, int]:
    """`code_ids` ({modality: first id} inside the text range) checked against the codebooks and the
    special tokens placed there."""
    out, taken = {}, [(i, i + 1, name) for name, i in specials.items()]
    for m, start in code_ids.items():
        if m not in codebooks:
            raise ValueError(f"code_ids names {m!r}, which has no codebook")
        cb = codebooks[m]
        end = start + cb.levels * cb.size if isinstance(start, int) and not isinstance(start, bool) else None
        if end is None or start < 0 or end > text_size:
            raise ValueError(f"the {m} codebook's {cb.levels} x {cb.size} ids from {start!r} must lie in the text "
                             f"range [0, {text_size})")
        for lo, hi, name in taken:
            if lo < end and start < hi:
                raise ValueError(f"the {m} codebook's ids [{start}, {end}) overlap {name}'s [{lo}, {hi})")
        taken.append((start, end, f"the {m} codebook"))
        out[m] = start
    return out


def _spans_json(spans: Mapping[str, SpanFormat]) -> dict:
    return {m: f.to_json() for m, f in spans.items()}


def _hash(body: Mapping[str, Any]) -> str:
    # The default span layout is left out, so that manifests written before `spans` was recorded keep
    # their hash and match a vocabulary built now. It is still covered: its markers are the special
    # tokens, and its headers are what "unitok-vocab/1" has always meant. Any other layout is hashed.
    if body.get("spans") == _spans_json(UNITOK_SPANS):
        body = {k: v for k, v in body.items() if k != "spans"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            if k == "hash":
                continue
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{p} only in theirs")
            elif k not in b:
                out.append(f"{p} missing in theirs")
            else:
                out.extend(_diff(a[k], b[k], p))
        return out
    return [] if a == b else [f"{path}: {b!r} vs {a!r}"]


def _as_int_array(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return arr.astype(np.int64)
        raise ValueError(f"{what}: expected integer codes, got dtype {arr.dtype}")
    return arr.astype(np.int64)
