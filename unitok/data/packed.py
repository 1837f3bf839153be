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
* Held-out split: a seeded `eval_fraction` of the documents never enters training, stratified by
  document kind (text only, or the media modality with most tokens): every kind with two or more
  documents holds at least one out and keeps at least one, so each modality's held-out loss exists
  even where its documents are few. `eval_batches()` packs them in order, deterministically.
* Condition dropout (classifier-free guidance): with probability `cond_dropout` per document and
  epoch (seeded), the text segment right before each media span is removed, so the model also
  learns the media without its condition; generation builds the unconditional stream the same way.
* `span_ids`: with `bidirectional_images`, the tokens of each image span share a nonzero id (full
  attention inside the span); the trainer refuses it where image tokens carry a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unitok.vocab import Modality

__all__ = ["PackedBatches", "Batch", "split_documents", "drop_conditions"]


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) int64 inputs
    targets: torch.Tensor  # (B, T) int64, -100 where no loss
    doc_ids: torch.Tensor  # (B, T) int64, one id per document piece in a row
    modality: torch.Tensor  # (B, T) int64, modality of each target (Modality values)
    span_ids: torch.Tensor | None = None  # (B, T) int64, nonzero inside image spans (bidirectional)


def split_documents(n: int, eval_fraction: float, seed: int, kinds=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) document indices: a seeded fraction held out. Stratified by `kinds` (one label
    per document; all one kind when None): a kind with at least two documents holds at least one out
    and keeps at least one for training."""
    if eval_fraction <= 0 or n < 2:
        return np.arange(n), np.zeros(0, np.int64)
    u = np.random.default_rng([seed, 7]).random(n)
    held = u < eval_fraction
    kinds = np.zeros(n, np.int64) if kinds is None else np.asarray(kinds)
    for k in np.unique(kinds):
        idx = np.flatnonzero(kinds == k)
        if len(idx) < 2:
            held[idx] = False
            continue
        if not held[idx].any():
            held[idx[u[idx].argmin()]] = True
        if held[idx].all():
            held[idx[u[idx].argmax()]] = False
    return np.flatnonzero(~held), np.flatnonzero(held)


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
        from unitok.data.shards import document_kinds

        kinds = document_kinds(shards) if eval_fraction > 0 else None
        self.train_docs, self.eval_docs = split_documents(len(shards), eval_fraction, seed, kinds)
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
        """The held-out documents packed in order (a fresh, deterministic pass every call)."""
        if len(self.eval_docs) == 0:
            return []
        saved, docs = (dict(self.state), self.train_docs, self._perm, self._perm_epoch), self.eval_docs
        self.train_docs, self.state = docs, {"epoch": 0, "pos": 0, "offset": 0}
        self._perm, self._perm_epoch = docs, 0  # in order
        drop, self.cond_dropout = self.cond_dropout, 0.0
        try:
            out = []
            for _ in range(max_batches):
                out.append(self._batch([self._row() for _ in range(self.batch_size)]))
                if self.state["epoch"] > 0:  # every held-out token seen once
                    break
        finally:
            self.state, self.train_docs, self._perm, self._perm_epoch = saved
            self.cond_dropout = drop
        return out
