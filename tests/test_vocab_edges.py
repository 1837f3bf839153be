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
