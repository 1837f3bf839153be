"""The held-out split by source (`split_shards`) on small in-memory shards with a sources.jsonl, so it
runs in milliseconds (tests/test_unified.py checks it on pretokenized recordings and videos): every
chunk of one recording or video on one side, a text file held out as whole blocks of consecutive
passages, a kind with one source reported "not held out", and the report's counts."""

import dataclasses
import json
import math

import numpy as np

from test_packed import _shards
from unitok.data.packed import PackedBatches, split_documents, split_shards
from unitok.data.shards import SOURCES
from unitok.vocab import Modality

T, V, A = int(Modality.TEXT), int(Modality.VIDEO), int(Modality.AUDIO)

# (kind, source, documents): a recording or video split into chunks, or a run of passages of a text
# file. The media sit in a folder whose paths sort before the text file's, as pretokenize's inputs
# often do (a text run's block labels must not fall on a media source's).
MIXED = [(A, "in/rec0.wav", 3), (T, "text.jsonl", 9), (V, "in/clip0.mp4", 2), (A, "in/rec1.wav", 3),
         (T, "text.jsonl", 4), (V, "in/clip1.mp4", 2), (T, "text.jsonl", 2)]


def _sharded(tmp_path, layout, sources: bool = True):
    """Shards of `layout` (6 tokens per document) and, with `sources`, their sources.jsonl; the
    expected groups: one per media source, and per text run blocks of ceil(sqrt(run)) passages."""
    kinds, src, groups = [], [], []
    line = 0
    for s, (kind, source, n) in enumerate(layout):
        for j in range(n):
            kinds.append(kind)
            if kind == T:
                line += 1
                src.append({"source": f"{source}:{line}"})
                groups.append(f"run {s} block {j // math.ceil(math.sqrt(n))}")
            else:
                src.append({"source": source, "chunk": j})
                groups.append(source)
    if sources:
        (tmp_path / SOURCES).write_text("".join(json.dumps(x) + "\n" for x in src))
    return dataclasses.replace(_shards([6] * len(kinds), kinds), path=tmp_path), np.array(kinds), np.array(groups)


def test_every_chunk_of_a_source_and_every_text_block_is_on_one_side(tmp_path):
    sh, kinds, groups = _sharded(tmp_path, MIXED)
    for seed in range(20):
        train, held, _ = split_shards(sh, 0.3, seed)
        assert sorted(np.r_[train, held].tolist()) == list(range(len(sh)))
        side = np.isin(np.arange(len(sh)), held)
        for g in np.unique(groups):  # a recording, a video, a block of consecutive passages: whole
            assert len(set(side[groups == g])) == 1, (seed, g, held)
        for k in (T, V, A):  # each kind with two or more groups: some held out, some trained on
            assert side[kinds == k].any() and not side[kinds == k].all(), (seed, k)
        # exactly the per-group split of split_documents, over those groups
        assert sorted(held.tolist()) == split_documents(len(sh), 0.3, seed, kinds, groups)[1].tolist(), seed


def test_the_report_counts_sources_blocks_and_documents(tmp_path):
    sh, kinds, groups = _sharded(tmp_path, MIXED)
    train, held, report = split_shards(sh, 0.3, 1)
    text = held[kinds[held] == T]
    assert report == {
        "text": f"{len(set(groups[text]))} of 6 blocks held out ({len(text)} of 15 documents)",
        "video": "1 of 2 sources held out (2 of 4 documents)",
        "audio": "1 of 2 sources held out (3 of 6 documents)",
    }
    assert kinds[held[:3]].tolist() == [T, V, A]  # each kind's first held-out document first


def test_a_kind_with_one_source_or_block_is_not_held_out(tmp_path):
    (tmp_path / "a").mkdir()
    sh, kinds, _ = _sharded(tmp_path / "a", [(T, "notes.jsonl", 2), (A, "rec0.wav", 3), (V, "clip0.mp4", 4),
                                             (V, "clip1.mp4", 1)])
    train, held, report = split_shards(sh, 0.5, 0)
    assert report["text"] == "not held out: one block (2 documents)"
    assert report["audio"] == "not held out: one source (3 documents)"
    assert set(kinds[held]) == {V} and set(kinds[train]) == {T, A, V}
    assert report["video"] == f"1 of 2 sources held out ({len(held)} of 5 documents)"
    # shards written before sources.jsonl: each media document its own source
    (tmp_path / "b").mkdir()
    old, kinds, _ = _sharded(tmp_path / "b", [(T, "notes.jsonl", 4), (A, "rec0.wav", 1), (V, "clip0.mp4", 3)],
                             sources=False)
    train, held, report = split_shards(old, 0.5, 0)
    h = (kinds[held] == V).sum()
    assert report == {"text": "1 of 2 blocks held out (2 of 4 documents)",
                      "video": f"{h} of 3 documents held out ({h} of 3 documents)",
                      "audio": "not held out: one document (1 documents)"}


def test_nothing_held_out_has_no_report_and_two_sources_hold_one_out(tmp_path):
    sh, _, _ = _sharded(tmp_path, [(A, "rec0.wav", 1), (A, "rec1.wav", 1)])
    assert split_shards(sh, 0.01, 0)[2] == {"audio": "1 of 2 sources held out (1 of 2 documents)"}
    for frac, shards in ((0.0, sh), (0.5, dataclasses.replace(sh, offsets=sh.offsets[:2]))):  # none; one document
        train, held, report = split_shards(shards, frac, 0)
        assert train.tolist() == list(range(len(shards))) and held.size == 0 and report == {}
    assert PackedBatches(sh, 3, 1, eval_fraction=0.0).split_report == {}  # no "held out" line in a run's summary
