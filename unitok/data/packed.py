"""Packed training batches from token shards: documents back to back, their boundaries kept.

    data = PackedBatches(read_shards("shards/"), seq_len=256, batch_size=8, seed=0)
    b = data.next(world, rank)     # this rank's slice of the global batch
    b.ids, b.targets, b.doc_ids, b.modality, b.span_ids      # (B, T) each

* Each row holds seq_len + 1 tokens of consecutive documents (a long document continues in the
  next row). `doc_ids` number the pieces of a row, so attention never crosses a document and RoPE
  positions restart in each (the model does both from doc_ids); a target that belongs to the next
  document is -100, so no loss crosses one either.
* Order: a seeded permutation of the training documents per epoch. The state (epoch, position in
  the permutation, offset inside the current document) is small JSON; the engine checkpoints it.
  Every rank draws the global batch and keeps its slice, so any number of ranks sees the same data.
* Held-out split (`split_shards`): a seeded `eval_fraction` of the documents never enters
  training, held out by source: every chunk or clip of one recording, video or photo (the shards'
  sources.jsonl; a line's "group" where it has one, e.g. a corpus clip's recording) on one side,
  and text documents in blocks of about sqrt(n) consecutive documents
  (n: the run of consecutive text documents, as a manifest lists a file's passages), so held-out
  passages sit between held-out ones, not between training ones. Stratified by document kind (text
  only, or the media modality with most tokens): a kind with two or more sources (blocks) holds at
  least one out and keeps at least one, so each modality's held-out loss exists even where its
  sources are few; a kind with one source is not held out, and the split's report says so.
  `eval_batches()` packs the held-out documents in order, deterministically, every target once.
* Condition dropout (classifier-free guidance): with probability `cond_dropout` per document and
  epoch (seeded), the text segment right before each media span is removed, so the model also
  learns the media without its condition; generation builds the unconditional stream the same way.
* `span_ids`: with `bidirectional_images`, the tokens of each image span share a nonzero id (full
  attention inside the span); the trainer refuses it where image tokens carry a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from unitok.vocab import Modality

__all__ = ["PackedBatches", "Batch", "split_documents", "split_shards", "drop_conditions"]


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) int64 inputs
    targets: torch.Tensor  # (B, T) int64, -100 where no loss
    doc_ids: torch.Tensor  # (B, T) int64, one id per document piece in a row
    modality: torch.Tensor  # (B, T) int64, modality of each target (Modality values)
    span_ids: torch.Tensor | None = None  # (B, T) int64, nonzero inside image spans (bidirectional)


def split_documents(n: int, eval_fraction: float, seed: int, kinds=None, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) document indices: a seeded fraction of the groups held out, whole. `groups`: one
    label per document (the documents of a label go to one side; each document its own group when
    None). Stratified by `kinds` (one label per document, the same within a group; all one kind when
    None): a kind with at least two groups holds at least one out and keeps at least one for
    training; a kind with one group is not held out."""
    if eval_fraction <= 0 or n < 2:
        return np.arange(n), np.zeros(0, np.int64)
    u = np.random.default_rng([seed, 7]).random(n)
    kinds = np.zeros(n, np.int64) if kinds is None else np.asarray(kinds)
    _, first, group = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_index=True,
                                return_inverse=True)
    u, kinds = u[first], kinds[first]  # a group draws its first document's number: per document without groups
    held = u < eval_fraction
    for k in np.unique(kinds):
        idx = np.flatnonzero(kinds == k)
        if len(idx) < 2:
            held[idx] = False
            continue
        if not held[idx].any():
            held[idx[u[idx].argmin()]] = True
        if held[idx].all():
            held[idx[u[idx].argmax()]] = False
    return np.flatnonzero(~held[group]), np.flatnonzero(held[group])


def split_shards(shards, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The trainer's held-out split: (train, eval, report). `split_documents` by document kind, in
    groups: a media document's group is its source (every chunk of one file; each document alone in
    shards without sources.jsonl), text documents go in blocks of ceil(sqrt(n)) consecutive ones
    (n: a run of consecutive text documents). eval lists the kinds interleaved (the order in which
    `eval_batches` packs them). report: per kind name (text, image, video, audio), a line: how many
    of its sources (blocks) and documents are held out, or "not held out" and why."""
    from unitok.data.shards import document_kinds, document_sources

    n = len(shards)
    if eval_fraction <= 0 or n < 2:
        return np.arange(n), np.zeros(0, np.int64), {}
    kinds, src = document_kinds(shards), document_sources(shards)
    groups = np.arange(n) if src is None else np.unique([s.get("group", s["source"]) for s in src],
                                                        return_inverse=True)[1]
    text = kinds == Modality.TEXT
    starts = np.flatnonzero(text & ~np.r_[False, text[:-1]])
    ends = np.flatnonzero(text & ~np.r_[text[1:], False]) + 1
    for a, b in zip(starts, ends):  # labels from n + a on: above every source's, distinct per run and block
        groups[a:b] = n + a + np.arange(b - a) // math.ceil(math.sqrt(b - a))
    train, held = split_documents(n, eval_fraction, seed, kinds, groups)
    # evaluation order: each kind's first held-out document, then each one's second, ...: the first
    # `eval_batches` of a pass cover every kind even where they cannot cover every document
    k = kinds[held]
    nth = np.zeros(len(held), np.int64)
    for x in np.unique(k):
        nth[k == x] = np.arange((k == x).sum())
    held = held[np.lexsort((k, nth))]
    report = {}
    for k in np.unique(kinds):
        docs, unit = np.flatnonzero(kinds == k), "blocks" if k == Modality.TEXT else "sources" if src else "documents"
        n_groups, h = len(np.unique(groups[docs])), np.intersect1d(docs, held)
        report[Modality(k).name.lower()] = (
            f"not held out: one {unit[:-1]} ({len(docs)} documents)" if n_groups < 2 else
            f"{len(np.unique(groups[h]))} of {n_groups} {unit} held out ({len(h)} of {len(docs)} documents)")
    return train, held, report


def drop_conditions(ids: np.ndarray, mod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the text right before each media span (back to the previous non-text token, <bos> kept)."""
    keep = np.ones(len(ids), bool)
    media_start = np.flatnonzero((mod[1:] != Modality.TEXT) & (mod[:-1] == Modality.TEXT)) + 1
    for s in media_start:
        j = s
        while j > 1 and mod[j - 1] == Modality.TEXT:  # index 0 is <bos>
            j -= 1
        keep[j:s] = False
    return ids[keep], mod[keep]


class PackedBatches:
    def __init__(self, shards, seq_len: int, batch_size: int, seed: int = 0, eval_fraction: float = 0.05,
                 cond_dropout: float = 0.0, bidirectional_images: bool = False):
        self.sh, self.seq_len, self.batch_size, self.seed = shards, seq_len, batch_size, seed
        self.cond_dropout, self.bidirectional_images = cond_dropout, bidirectional_images
        self.train_docs, self.eval_docs, self.split_report = split_shards(shards, eval_fraction, seed)
        if len(self.train_docs) == 0:
            raise ValueError(f"{shards.path}: no training documents")
        self.state = {"epoch": 0, "pos": 0, "offset": 0}
        self._perm_epoch, self._perm = -1, None
        if bidirectional_images:
            self._boi, self._eoi = shards.vocab.marker_ids["image"]

    # -------------------------------------------------------------- documents
    def _order(self) -> np.ndarray:
        e = self.state["epoch"]
        if self._perm_epoch != e:
            self._perm = self.train_docs[np.random.default_rng([self.seed, e]).permutation(len(self.train_docs))]
            self._perm_epoch = e
        return self._perm

    def _doc(self, i: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        ids, mod = self.sh.document(int(i))
        ids, mod = np.asarray(ids, np.int64), np.asarray(mod, np.int64)
        if self.cond_dropout > 0 and np.random.default_rng([self.seed, epoch, int(i), 1]).random() < self.cond_dropout:
            ids, mod = drop_conditions(ids, mod)
        return ids, mod

    def _row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """seq_len + 1 tokens of consecutive training documents, advancing the state."""
        L = self.seq_len + 1
        ids, mods, docs = [], [], []
        n, piece = 0, 0
        while n < L:
            order = self._order()
            d = order[self.state["pos"]]
            t, m = self._doc(d, self.state["epoch"])
            o = self.state["offset"]
            take = min(L - n, len(t) - o)
            ids.append(t[o:o + take])
            mods.append(m[o:o + take])
            docs.append(np.full(take, piece, np.int64))
            n, piece = n + take, piece + 1
            if o + take >= len(t):  # document finished: next one (next epoch after the last)
                self.state["offset"] = 0
                self.state["pos"] += 1
                if self.state["pos"] == len(order):
                    self.state["pos"], self.state["epoch"] = 0, self.state["epoch"] + 1
            else:
                self.state["offset"] = o + take
        return np.concatenate(ids), np.concatenate(mods), np.concatenate(docs)

    def _batch(self, rows) -> Batch:
        ids = torch.from_numpy(np.stack([r[0] for r in rows]))
        mod = torch.from_numpy(np.stack([r[1] for r in rows]))
        doc = torch.from_numpy(np.stack([r[2] for r in rows]))
        targets = ids[:, 1:].clone()
        targets[doc[:, 1:] != doc[:, :-1]] = -100  # the next document's first token is not a target
        b = Batch(ids[:, :-1].contiguous(), targets, doc[:, :-1].contiguous(), mod[:, 1:].contiguous())
        if self.bidirectional_images:
            b.span_ids = self._image_spans(b.ids)
        return b

    def _image_spans(self, ids: torch.Tensor) -> torch.Tensor:
        """A nonzero id per image span (its codes and markers), 0 elsewhere."""
        start = (ids == self._boi).long()
        end = (ids == self._eoi).long()
        inside = torch.cumsum(start, 1) - torch.cumsum(end, 1) + end  # markers included
        return torch.where(inside > 0, torch.cumsum(start, 1), torch.zeros_like(ids))

    def next(self, world: int = 1, rank: int = 0) -> Batch:
        rows = [self._row() for _ in range(self.batch_size)]
        n = self.batch_size // world
        return self._batch(rows[rank * n:(rank + 1) * n])

    def eval_batches(self, max_batches: int) -> list[Batch]:
        """The held-out documents packed in order, without condition dropout, every target once: a row
        that ends inside a document gives its last token (a target there) to the next row as its
        first input, and the last row is padded without targets. A deterministic pass (the first
        `max_batches` batches of it); the last batch may have fewer rows."""
        L, pad, limit = self.seq_len + 1, self.sh.vocab.pad, max_batches * self.batch_size
        rows, cur, n = [], [], 0  # cur: the current row's (ids, modality) pieces, n tokens in all

        def flush():
            nonlocal cur, n
            ids = np.concatenate([p[0] for p in cur] + [np.full(L - n, pad, np.int64)])
            mod = np.concatenate([p[1] for p in cur] + [np.zeros(L - n, np.int64)])
            doc = np.concatenate([np.full(len(p[0]), j, np.int64) for j, p in enumerate(cur)] +
                                 [np.full(L - n, len(cur), np.int64)])  # the padding: a piece of its own
            rows.append(((ids, mod, doc), n))
            cur, n = [], 0

        for d in self.eval_docs:
            t, m = (np.asarray(a, np.int64) for a in self.sh.document(int(d)))
            o = 0
            while o < len(t) and len(rows) < limit:
                take = min(L - n, len(t) - o)
                cur.append((t[o:o + take], m[o:o + take]))
                n, o = n + take, o + take
                if n == L:
                    flush()
                    if o < len(t):
                        o -= 1  # the row's last token starts the next row
            if len(rows) == limit:
                break
        if cur and len(rows) < limit:
            flush()
        out = []
        for a in range(0, len(rows), self.batch_size):
            part = rows[a:a + self.batch_size]
            b = self._batch([r for r, _ in part])
            for i, (_, n) in enumerate(part):
                b.targets[i, n - 1:] = -100  # the padding is no target
            out.append(b)
        return out
