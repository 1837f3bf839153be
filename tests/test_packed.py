"""Packed batches on small in-memory shards whose every token says which document and position it is
(1000 x document + position), so each row can be read back exactly: rows are consecutive documents,
a long one continues in the next row, no target crosses a document, each epoch is one seeded
permutation of the training documents, the state resumes the stream, ranks split the global batch,
and the held-out pass is deterministic and leaves training where it was."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unitok.data.packed import PackedBatches, drop_conditions, split_documents
from unitok.data.shards import Shards
from unitok.vocab import Modality

T, I, A = int(Modality.TEXT), int(Modality.IMAGE), int(Modality.AUDIO)


def _shards(lengths, kinds=None) -> Shards:
    """Document i: tokens 1000 i + (0, 1, ...); text, or (kinds[i] a media modality) a media document
    whose tokens after the first two are that modality's codes."""
    toks, mods = [], []
    for i, n in enumerate(lengths):
        toks.append(1000 * i + np.arange(n))
        m = np.full(n, T)
        if kinds is not None and kinds[i] != T:
            m[2:] = kinds[i]
        mods.append(m)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pad = SimpleNamespace(pad=-1)  # eval_batches pads its last row with the vocabulary's <pad>
    return Shards(Path("memory"), np.concatenate(toks), np.concatenate(mods).astype(np.uint8), offsets, pad, {})


def _docs_of(ids: torch.Tensor) -> list[int]:
    return sorted(set((ids.flatten() // 1000).tolist()))


def test_split_edge_cases():
    for frac, n in ((0.0, 10), (-0.1, 10), (0.5, 1), (0.5, 0)):  # nothing held out
        tr, ev = split_documents(n, frac, seed=0)
        assert tr.tolist() == list(range(n)) and ev.size == 0 and ev.dtype == np.int64
    tr, ev = split_documents(2, 0.01, seed=0)  # two documents: one of each, whatever the fraction
    assert len(tr) == len(ev) == 1 and sorted(tr.tolist() + ev.tolist()) == [0, 1]
    tr, ev = split_documents(3, 0.01, seed=0)
    assert len(tr) == 2 and len(ev) == 1


def test_rows_are_consecutive_documents_with_no_target_across_them():
    sh = _shards([5, 3, 12, 4])
    data = PackedBatches(sh, seq_len=7, batch_size=2, seed=0, eval_fraction=0.0)
    order = data._order().tolist()
    assert sorted(order) == [0, 1, 2, 3]
    stream = np.concatenate([sh.document(d)[0] for d in order])
    b = data.next()
    # rows of seq_len + 1 tokens of the stream, the second starting where the first stopped
    assert b.ids.tolist() == [stream[0:7].tolist(), stream[8:15].tolist()]
    assert b.targets.shape == b.ids.shape == b.doc_ids.shape == b.modality.shape == (2, 7)
    for r, start in enumerate((0, 8)):
        row = stream[start:start + 8]
        same = row[1:] // 1000 == row[:-1] // 1000
        assert b.targets[r].tolist() == [int(t) if s else -100 for t, s in zip(row[1:], same)]
        # doc_ids: one id per piece, increasing where the document changes
        assert (np.diff(b.doc_ids[r].numpy()) != 0).tolist() == (np.diff(row[:-1] // 1000) != 0).tolist()
    assert b.span_ids is None


def test_modality_is_the_targets_and_epochs_are_seeded_permutations():
    sh = _shards([4, 6, 5, 3, 6], kinds=[T, I, T, I, T])
    data = PackedBatches(sh, seq_len=3, batch_size=1, seed=3, eval_fraction=0.0)
    perm = np.random.default_rng([3, 0]).permutation(5)  # epoch 0's order, seeded by (seed, epoch)
    ids = np.concatenate([sh.document(d)[0] for d in perm])
    mod = np.concatenate([sh.document(d)[1] for d in perm])
    for r in range(6):  # one epoch: 24 tokens, 4 per row
        b = data.next()
        assert b.ids[0].tolist() == ids[4 * r:4 * r + 3].tolist()
        assert b.modality[0].tolist() == mod[4 * r + 1:4 * r + 4].tolist()  # the modality of each target
    assert data.state == {"epoch": 1, "pos": 0, "offset": 0}  # exactly one epoch consumed
    assert int(data.next().ids[0, 0]) == 1000 * np.random.default_rng([3, 1]).permutation(5)[0]


def test_state_resumes_the_stream_in_any_epoch():
    sh = _shards([5, 9, 4, 7])
    a = PackedBatches(sh, seq_len=6, batch_size=2, seed=1, eval_fraction=0.0)
    for _ in range(3):  # into the second epoch, inside a document
        a.next()
    assert a.state["epoch"] == 1 and a.state["offset"] > 0
    b = PackedBatches(sh, seq_len=6, batch_size=2, seed=1, eval_fraction=0.0)
    b.state = dict(a.state)  # what the engine saves and loads (JSON)
    for _ in range(4):
        x, y = a.next(), b.next()
        assert torch.equal(x.ids, y.ids) and torch.equal(x.targets, y.targets) and torch.equal(x.doc_ids, y.doc_ids)


def test_ranks_take_their_slice_of_the_global_batch():
    sh = _shards([6, 8, 5, 9, 7, 4])
    one = PackedBatches(sh, seq_len=5, batch_size=4, seed=0, eval_fraction=0.0).next()
    parts = [PackedBatches(sh, seq_len=5, batch_size=4, seed=0, eval_fraction=0.0).next(world=2, rank=r) for r in (0, 1)]
    assert torch.equal(torch.cat([p.ids for p in parts]), one.ids)
    assert torch.equal(torch.cat([p.targets for p in parts]), one.targets)


def test_media_documents_are_held_out_too():
    """eval_fraction > 0 stratifies by document kind: a kind with two documents holds one out."""
    lengths = [6] * 30 + [6, 6]
    data = PackedBatches(_shards(lengths, kinds=[T] * 30 + [I, I]), seq_len=4, batch_size=1, seed=0, eval_fraction=0.05)
    assert sum(d >= 30 for d in data.eval_docs) == 1 and sum(d >= 30 for d in data.train_docs) == 1
    empty = Shards(Path("memory"), np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(1, np.int64), None, {})
    with pytest.raises(ValueError, match="memory: no training documents"):
        PackedBatches(empty, seq_len=2, batch_size=1)


def test_eval_batches_are_the_held_out_documents_in_order_and_leave_training_alone():
    sh = _shards([8] * 40, kinds=[I] * 40)  # condition dropout would remove token 1 of each: not in eval
    data = PackedBatches(sh, seq_len=7, batch_size=2, seed=0, eval_fraction=0.1, cond_dropout=1.0)
    ev = data.eval_docs.tolist()
    assert len(ev) >= 2
    data.next()
    state, perm = dict(data.state), data._perm.copy()
    out = data.eval_batches(max_batches=1)
    assert len(out) == 1 and out[0].ids.tolist() == [sh.document(d)[0][:7].tolist() for d in ev[:2]]
    assert data.state == state and data.cond_dropout == 1.0 and np.array_equal(data._perm, perm)
    assert not set(_docs_of(torch.stack([data.next().ids for _ in range(30)]))) & set(ev)  # never trained on
    again = data.eval_batches(max_batches=100)
    assert torch.equal(again[0].ids, out[0].ids)  # a fresh pass every call
    assert set(_docs_of(torch.cat([b.ids for b in again]))) == set(ev)
    assert len(again) <= -(-len(ev) // 2)  # one pass, not max_batches
    assert PackedBatches(sh, seq_len=7, batch_size=2, eval_fraction=0.0).eval_batches(5) == []


def test_drop_conditions_keeps_bos_and_text_between_spans_not_before_them():
    ids = np.arange(9)
    mod = np.array([T, T, I, I, T, T, T, I, T])
    keep = drop_conditions(ids, mod)
    assert keep[0].tolist() == [0, 2, 3, 7, 8] and keep[1].tolist() == [T, I, I, I, T]
    assert drop_conditions(ids[:4], np.array([T, I, I, T]))[0].tolist() == [0, 1, 2, 3]  # only <bos> before it


def test_condition_dropout_is_seeded_per_document_and_epoch():
    sh = _shards([8] * 40, kinds=[I] * 40)  # each loses its token 1 (the text before the span) when dropped
    data = PackedBatches(sh, seq_len=7, batch_size=1, seed=2, eval_fraction=0.0, cond_dropout=0.5)
    dropped = [len(data._doc(i, e)[0]) == 7 for e in range(3) for i in range(40)]
    assert dropped == [np.random.default_rng([2, e, i, 1]).random() < 0.5 for e in range(3) for i in range(40)]
    assert 0.35 < np.mean(dropped) < 0.65
    for p, n in ((0.0, 8), (1.0, 7)):
        d = PackedBatches(sh, seq_len=7, batch_size=1, seed=2, eval_fraction=0.0, cond_dropout=p)
        assert {len(d._doc(i, 0)[0]) for i in range(40)} == {n}


def test_eval_batches_score_every_held_out_target_once_with_its_modality():
    """Documents shorter and longer than a row: every held-out target once, in order, with its
    modality, whatever the row length; a cut pass is the full pass's first batches, each full."""
    rng = np.random.default_rng(0)
    sh = _shards(rng.integers(2, 20, 40).tolist(), kinds=rng.choice([T, I, A], 40).tolist())
    padding = []
    for seq_len in (5, 9, 10, 11):
        data = PackedBatches(sh, seq_len=seq_len, batch_size=3, seed=0, eval_fraction=0.5)
        docs = [sh.document(int(d)) for d in data.eval_docs]
        assert any(len(t) > seq_len + 1 for t, _ in docs) and any(len(t) < seq_len for t, _ in docs)
        full = data.eval_batches(1000)
        for b in full:
            assert b.ids.shape == b.targets.shape == b.doc_ids.shape == b.modality.shape == (len(b.ids), seq_len)
        scored = torch.cat([b.targets != -100 for b in full])
        targets, mods = (torch.cat([getattr(b, f) for b in full])[scored].tolist() for f in ("targets", "modality"))
        assert targets == np.concatenate([t[1:] for t, _ in docs]).tolist()  # each once, in order, no padding
        assert mods == np.concatenate([m[1:] for _, m in docs]).tolist()
        assert all(len(b.ids) == 3 for b in full[:-1])
        padding.append(int((full[-1].ids[-1] == sh.vocab.pad).sum()))
        for k in range(1, len(full)):
            cut = data.eval_batches(k)
            assert len(cut) == k and all(len(b.ids) == 3 for b in cut)
            assert all(torch.equal(a.targets, b.targets) and torch.equal(a.modality, b.modality)
                       for a, b in zip(cut, full))
    assert max(padding) >= 2  # a last row with padding after padding: those targets were not scored either
