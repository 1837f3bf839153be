"""Vocabulary edges the mutation run found untested: a span format cannot change under the vocabularies
that share it, max_size 0 where no span has a header, and an imported vocabulary whose document tokens
are text ids (its first span marker then sits right after the text)."""

import dataclasses

import numpy as np
import pytest

from unitok.vocab import UNITOK_SPANS, CodebookSpec, UnifiedVocab


def test_a_span_format_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        UNITOK_SPANS["image"].begin = "<img>"


def test_max_size_0_only_without_span_headers():
    audio = {"audio": UNITOK_SPANS["audio"]}
    v = UnifiedVocab(10, [CodebookSpec("audio", 4)], max_size=0, spans=audio)  # audio spans have no header
    assert v.size == 10 + 5 + 4 and v.unpack(v.pack([{"audio": np.zeros((1, 2), int)}]).ids).ok
    with pytest.raises(ValueError, match="max_size must be >= 0"):
        UnifiedVocab(10, max_size=-1, spans=audio)
    with pytest.raises(ValueError, match="max_size must be >= 1: a span header holds size tokens"):
        UnifiedVocab(10, [CodebookSpec("image", 4)], max_size=0)


def test_an_imported_vocabulary_reads_its_first_span_marker_right_after_the_text():
    """<bos>, <eos> and <pad> as text ids (as `unitok checkpoint import` maps them): the span markers come first
    after the text, so id text_size is <boi>, not text."""
    v = UnifiedVocab(50, [CodebookSpec("image", 4)], max_size=2, specials={"<bos>": 40, "<eos>": 41, "<pad>": 42})
    assert v.special["<boi>"] == 50 and v.token_name(50) == "<boi>"
    doc = v.pack([{"text": [3]}, {"image": np.array([[1]])}])
    un = v.unpack(doc.ids)
    assert un.ok and un.segments[0] == {"text": [3]} and un.segments[1]["image"].tolist() == [[1]]


def test_special_ids_of_an_imported_vocabulary_are_checked_and_recorded():
    """An imported model's <bos>/<eos>/<pad> may be any text ids, 0 included (several models end with
    id 0), and may share one; the manifest records them so the vocabulary loads back the same."""
    v = UnifiedVocab(20, max_size=0, spans={}, specials={"<bos>": 1, "<eos>": 0, "<pad>": 0})
    assert (v.bos, v.eos, v.pad) == (1, 0, 0) and v.manifest()["special_ids"] == {"<bos>": 1, "<eos>": 0, "<pad>": 0}
    assert UnifiedVocab.from_manifest(v.manifest()).special == v.special
    assert "special_ids" not in UnifiedVocab(20).manifest()
    refused = [({"<sep>": 3}, "'<sep>' is not one of this vocabulary's"),
               ({"<eos>": 20}, r"<eos> must have a text id in \[0, 20\), got 20"),
               ({"<eos>": -1}, "got -1"), ({"<eos>": True}, "got True"), ({"<eos>": 2.0}, "got 2.0"),
               ({"<boi>": 4, "<eoi>": 4}, "share an id"), ({"<bos>": 4, "<boi>": 4}, "share an id")]
    for specials, why in refused:
        with pytest.raises(ValueError, match=why):
            UnifiedVocab(20, [CodebookSpec("image", 4)], max_size=2, specials=specials)
