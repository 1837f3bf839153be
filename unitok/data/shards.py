"""Token shards: the layout `unitok pretokenize` writes (`unitok.data.pretokenize`), and reading it.

    sh = read_shards("shards/")            # memory-mapped; sh.document(i) -> (ids, modality)
    kinds = document_kinds(sh)             # per document: its main media modality
    src = document_sources(sh)             # per document: {"source": ..., "chunk": k}; None for old shards
    ent = unigram_entropy(sh)              # per modality: the entropy of the token frequencies
    base = unigram_cross_entropy(sh, train_docs, targets, modality)   # the loss baseline of held-out targets

SHARDS/: tokens.bin (uint16 when the vocabulary fits, else uint32), modality.bin (uint8, one per
token), offsets.bin (int64, document starts and the end), sources.jsonl (one line per document: the
input it came from, as stats.json names inputs: a folder's media file, "archive.tar:key" or
"manifest.jsonl:line"; with "chunk": k for the k-th chunk or clip of a media file that became one
document per chunk), vocab.json, tokenizers/<modality>/ (the tokenizers, for decoding), stats.json
(documents, tokens per modality, every skipped input with its source and reason, the policy,
timings); progress.json only while a run is unfinished. Shards written before sources.jsonl
existed load with a warning (their held-out split cannot group a recording's chunks).

    unitok shards show SHARDS                          # print_stats of stats.json
    unitok shards decode SHARDS --doc N --out DIR      # a document back as text and media files
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unitok.errors import DataError

__all__ = ["TOKENS", "MODALITY", "OFFSETS", "SOURCES", "FILES", "VOCAB", "STATS", "PROGRESS", "TOKENIZERS", "Shards",
           "read_shards", "document_kinds", "document_sources", "unigram_entropy", "unigram_cross_entropy",
           "print_stats"]

# The names of a shard folder's files: pretokenize writes them, `read_shards` reads them.
TOKENS, MODALITY, OFFSETS, SOURCES = "tokens.bin", "modality.bin", "offsets.bin", "sources.jsonl"
FILES = (TOKENS, MODALITY, OFFSETS, SOURCES)  # appended together; progress.json records their committed sizes
VOCAB, STATS, PROGRESS, TOKENIZERS = "vocab.json", "stats.json", "progress.json", "tokenizers"


@dataclass
class Shards:
    """Memory-mapped token shards: tokens[offsets[i]:offsets[i+1]] is document i."""

    path: Path
    tokens: np.ndarray
    modality: np.ndarray
    offsets: np.ndarray
    vocab: object
    stats: dict

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.modality[a:b]


def document_kinds(shards: Shards, chunk: int = 1 << 16) -> np.ndarray:
    """Per document: its most frequent media modality (a `Modality` value), or TEXT (0) when it has
    no media tokens. One pass over modality.bin, `chunk` documents at a time."""
    n, off = len(shards), shards.offsets
    kinds = np.zeros(n, np.int64)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        mod = np.asarray(shards.modality[off[a]:off[b]])
        starts = off[a:b] - off[a]
        nonempty = off[a + 1:b + 1] > off[a:b]
        counts = np.stack([np.add.reduceat((mod == m).astype(np.int64), np.minimum(starts, max(len(mod) - 1, 0)))
                           if len(mod) else np.zeros(b - a, np.int64) for m in (1, 2, 3)], 1)
        counts[~nonempty] = 0
        kinds[a:b] = np.where(counts.any(1), counts.argmax(1) + 1, 0)
    return kinds


def document_sources(shards: Shards) -> list[dict] | None:
    """Per document: {"source": the input it came from} (with "chunk": k for the k-th chunk or clip of
    a media file that became a document per chunk), from sources.jsonl; None for shards written
    before it existed."""
    f = shards.path / SOURCES
    if not f.is_file():
        return None
    lines = f.read_bytes().splitlines()
    if len(lines) != len(shards):
        raise DataError(f"{shards.path}: {SOURCES} has {len(lines)} lines for {len(shards)} documents")
    return [json.loads(x) for x in lines]


def _counts(shards: Shards, docs, targets_only: bool = False, chunk: int = 4096) -> np.ndarray:
    """(modalities, vocabulary) int64: how often each id occurs with each modality in the documents;
    with `targets_only` without each document's first token (<bos>), as the trainer scores them."""
    from unitok.vocab import Modality

    v, skip = shards.vocab.size, 1 if targets_only else 0
    counts = np.zeros((len(Modality), v), np.int64)
    for a in range(0, len(docs), chunk):  # one bincount per chunk of documents
        parts = [shards.document(int(i)) for i in docs[a:a + chunk]]
        ids = np.concatenate([np.asarray(t[skip:], np.int64) for t, _ in parts])
        mod = np.concatenate([np.asarray(m[skip:], np.int64) for _, m in parts])
        counts += np.bincount(mod * v + ids, minlength=counts.size).reshape(counts.shape)
    return counts


def _id_groups(vocab) -> list[np.ndarray]:
    """The ids a model that knows only the layout can tell apart by position: one group per residual
    level of each codebook (one id range per level, so the level of the next code is known), and the
    ids that are no code (text ids, special and size tokens)."""
    groups, rest = [], np.ones(vocab.size, bool)
    for m, lvl in vocab.code_start:
        a, b = vocab.code_range(m, lvl)
        groups.append(np.arange(a, b))
        rest[a:b] = False
    return groups + [np.flatnonzero(rest)]


def unigram_entropy(shards: Shards, docs=None) -> dict:
    """Per modality name: (tokens, H, H_level) in nats over the given documents (all by default).
    H is the entropy of that modality's unigram token distribution; H_level the entropy given the
    residual level (`_id_groups`); H_level == H with one level. A statistic of the documents, not a
    baseline for a held-out loss: that is `unigram_cross_entropy`."""
    from unitok.vocab import Modality

    docs = np.arange(len(shards)) if docs is None else np.asarray(docs, np.int64)
    counts, groups = _counts(shards, docs), _id_groups(shards.vocab)

    def entropy(c):
        c = c[c > 0].astype(np.float64)
        q = c / c.sum()
        return float(-(q * np.log(q)).sum())

    out = {}
    for m in Modality:
        c = counts[m]
        total = int(c.sum())
        if total:
            h_level = sum(c[g].sum() / total * entropy(c[g]) for g in groups if c[g].sum())
            out[m.name.lower()] = (total, entropy(c), float(h_level))
    return out


def unigram_cross_entropy(shards: Shards, train_docs, targets, modality) -> dict:
    """The fair baseline of a held-out loss. Per modality name in `modality` (one per target):
    (targets, CE, CE_level) in nats/token, the cross-entropy of `targets` (ids; -100: none) under the
    add-one-smoothed unigram of the training documents' targets of that modality (every token but a
    document's first, as the trainer scores them). CE smooths over the whole vocabulary (what the
    model predicts over); CE_level knows the layout: a code is predicted among the ids of its
    residual level, any other token among the ids that are no code (`_id_groups`); CE_level <= CE,
    as fewer ids and tokens share each group's smoothing. Unlike the entropy of the training tokens,
    a held-out token that training never showed costs here what it costs the model."""
    from unitok.vocab import Modality

    t, mod = np.asarray(targets, np.int64).reshape(-1), np.asarray(modality, np.int64).reshape(-1)
    keep = t != -100
    t, mod = t[keep], mod[keep]
    c = _counts(shards, np.asarray(train_docs, np.int64), targets_only=True).astype(np.float64)
    flat = np.log((c + 1) / (c.sum(1, keepdims=True) + shards.vocab.size))
    level = np.empty_like(flat)
    for g in _id_groups(shards.vocab):
        level[:, g] = np.log((c[:, g] + 1) / (c[:, g].sum(1, keepdims=True) + len(g)))
    out = {}
    for m in Modality:
        x = t[mod == m]
        if len(x):
            out[m.name.lower()] = (len(x), float(-flat[m, x].mean()), float(-level[m, x].mean()))
    return out


def read_shards(path) -> Shards:
    """A finished shard folder, memory-mapped. DataError for an unfinished or incomplete one."""
    from unitok.vocab import UnifiedVocab

    p = Path(path)
    if (p / PROGRESS).is_file():
        raise DataError(f"{p}: pretokenization was interrupted; finish it with `unitok pretokenize ... --resume`")
    for f in (TOKENS, MODALITY, OFFSETS, VOCAB, STATS):
        if not (p / f).is_file():
            raise DataError(f"{p}: not a token shard directory ({f} is missing)")
    if not (p / SOURCES).is_file():
        print(f"unitok: warning: {p} has no {SOURCES} (written before unitok recorded each document's source): "
              "its held-out split is per document, so chunks of one recording or video can fall on both sides; "
              "pretokenize again to split by source", file=sys.stderr)
    vocab = UnifiedVocab.load(p / VOCAB)
    stats = json.loads((p / STATS).read_text())
    dtype = np.dtype(stats["dtype"])
    tokens = np.memmap(p / TOKENS, dtype=dtype, mode="r") if (p / TOKENS).stat().st_size else \
        np.zeros(0, dtype)
    modality = np.memmap(p / MODALITY, dtype=np.uint8, mode="r") if len(tokens) else np.zeros(0, np.uint8)
    offsets = np.fromfile(p / OFFSETS, dtype=np.int64)
    if offsets[-1] != len(tokens) or len(modality) != len(tokens):
        raise DataError(f"{p}: shard files disagree (offsets end {offsets[-1]}, {len(tokens)} tokens)")
    return Shards(p, tokens, modality, offsets, vocab, stats)


# ------------------------------------------------------------------ CLI
def print_stats(stats: dict, path) -> None:
    """The summary of a run's statistics (stats.json): documents, tokens per modality, skipped inputs."""
    t = stats["timings"]
    print(f"{path}: {stats['documents']} documents, {stats['tokens']} tokens ({stats['dtype']}, vocabulary "
          f"{stats['vocab_size']}) in {t['seconds']} s with "
          + (f"{t['processes']} torchrun processes" if t.get("processes", 1) > 1 else f"{t['workers']} worker(s)"))
    for m, n in stats["tokens_per_modality"].items():
        print(f"  {m:6s} {n} tokens")
    print(f"  skipped {len(stats['skipped'])}" + "".join(f"\n    {x['source']}: {x['reason']}" for x in stats["skipped"][:20]))


def show_cli(args) -> int:
    sh = read_shards(args.shards)
    print_stats(sh.stats, sh.path)
    return 0


def decode_cli(args) -> int:
    """Write document N back as text and media files through the tokenizers' decoders."""
    import torch

    from unitok.data.audio import write_wav
    from unitok.data.media import to_uint8
    from unitok.tokenizers.base import load_tokenizer

    sh = read_shards(args.shards)
    if not 0 <= args.doc < len(sh):
        raise DataError(f"--doc {args.doc} outside [0, {len(sh)})")
    toks = {d.name: load_tokenizer(d) for d in sorted((sh.path / TOKENIZERS).iterdir())}
    ids, _ = sh.document(args.doc)
    un = sh.vocab.unpack(np.asarray(ids, np.int64), text_tokenizer=toks.get("text"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, seg in enumerate(un.segments):
        (kind, value), = seg.items()
        f = out / f"doc{args.doc}_{i:02d}_{kind}"
        if kind == "text":
            f = f.with_suffix(".txt")
            f.write_text(value if isinstance(value, str) else " ".join(map(str, value)))
        else:
            with torch.no_grad():
                codes = torch.as_tensor(np.asarray(value))[None]
                y = toks[kind].decode(codes)[0]
            if kind == "image":
                from PIL import Image

                f = f.with_suffix(".png")
                Image.fromarray(to_uint8(y)).save(f)
            elif kind == "audio":
                f = f.with_suffix(".wav")
                write_wav(f, y, toks[kind].config.sample_rate)
            else:
                import imageio.v3 as iio

                f = f.with_suffix(".gif")
                iio.imwrite(f, to_uint8(y.transpose(0, 1)), duration=1000 / 8, loop=0)
        written.append(f)
    for w in written:
        print(w)
    for p in un.problems:
        print(f"problem: {p}", file=sys.stderr)
    return 0
