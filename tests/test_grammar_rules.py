"""The grammar's room rule, checked against a slow oracle: along random walks under a token budget,
`fitting` keeps exactly the allowed ids after which the shortest way out of every span still fits;
`closing`, `allows` and the messages that name where a walk stands; the range helpers."""

import numpy as np
import pytest

from unitok.grammar import SpanGrammar, _cut, _merge
from unitok.vocab import CodebookSpec, UnifiedVocab

VOCAB = UnifiedVocab(50, [CodebookSpec("image", 16, levels=2), CodebookSpec("video", 8),
                          CodebookSpec("audio", 4, levels=3)], max_size=6)
G = SpanGrammar(VOCAB)


def _ids(ranges) -> set[int]:
    return {t for lo, hi in ranges for t in range(lo, hi)}


def _shortest_exit(prefix) -> int:
    """Tokens after `prefix` on the shortest way out of the span it leaves open (0 outside spans), walked
    with `allowed` alone: the smallest size, codes until the grid or frame is whole, the end marker."""
    st, n = G.start(prefix), 0
    while st.modality is not None:
        ranges = st.allowed()
        end = G.end[st.modality]
        t = end[0] if end in ranges else VOCAB.size_start if ranges[0][0] == VOCAB.size_start else ranges[0][0]
        st.push(t)
        n += 1
    return n


def test_fitting_keeps_exactly_what_can_still_finish():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        budget = int(rng.integers(1, 16))
        prefix, st = [VOCAB.bos], G.start()
        for room in range(budget, 0, -1):
            allowed = st.allowed()
            kept = _ids(st.fitting(allowed, room))
            fits = {t for t in _ids(allowed) if 1 + _shortest_exit(prefix[1:] + [t]) <= room}
            assert kept == fits, (prefix, room)
            checked += 1
            if not kept:
                break
            t = int(rng.choice(sorted(kept)))
            if t == VOCAB.eos:
                break
            prefix.append(t)
            st.push(t)
    assert checked > 300
    assert G.start().fitting(G.start().allowed(), 0) == []


def test_a_span_opens_only_with_room_for_its_shortest_form():
    """<boi> <size:1> <size:1> two codes <eoi>: 6 tokens; <boa> a frame of 3 codes <eoa>: 5."""
    free = G.start().allowed()
    boi, boa = VOCAB.special["<boi>"], VOCAB.special["<boa>"]
    assert boi in _ids(G.start().fitting(free, 6)) and boi not in _ids(G.start().fitting(free, 5))
    assert boa in _ids(G.start().fitting(free, 5)) and boa not in _ids(G.start().fitting(free, 4))
    assert _ids(G.start().fitting(free, 1)) == set(range(50)) | {VOCAB.eos}
    opened = G.start([boi])  # a prompt that opened a span without room for it: nothing fits, the row ends
    assert opened.fitting(opened.allowed(), 4) == [] and opened.fitting(opened.allowed(), 5) != []


def test_an_open_span_takes_a_new_frame_only_with_room_for_it_and_its_end():
    eoa = VOCAB.special["<eoa>"]
    st = G.start([VOCAB.special["<boa>"]] + [VOCAB.code_range("audio", lvl)[0] for lvl in range(3)])
    assert st.fitting(st.allowed(), 3) == [(eoa, eoa + 1)]
    assert st.fitting(st.allowed(), 4) == [VOCAB.code_range("audio", 0), (eoa, eoa + 1)]
    st.push(VOCAB.code_range("audio", 0)[0])  # mid-frame: its next level, whatever the room
    assert st.fitting(st.allowed(), 1) == [VOCAB.code_range("audio", 1)]
    img = G.start([VOCAB.special["<boi>"], VOCAB.size_token(1), VOCAB.size_token(2)])
    assert img.fitting(img.allowed(), 2) == [VOCAB.code_range("image", 0)]  # a header span: no frames


def test_closing_ends_the_span_as_soon_as_it_may():
    assert G.start().closing() == G.start().allowed()
    st = G.start([VOCAB.special["<boa>"]] + [VOCAB.code_range("audio", lvl)[0] for lvl in range(3)])
    eoa = VOCAB.special["<eoa>"]
    assert st.closing() == [(eoa, eoa + 1)]
    st.push(VOCAB.code_range("audio", 0)[0])
    assert st.closing() == st.allowed() == [VOCAB.code_range("audio", 1)]


def test_allows_is_the_mask_and_push_chains():
    for prefix in ([], [VOCAB.special["<boi>"]], [VOCAB.special["<boi>"], VOCAB.size_token(1), VOCAB.size_token(1)],
                   [VOCAB.special["<boa>"]], [VOCAB.eos]):
        st = G.start(prefix)
        mask = G.mask(st.allowed())
        assert [st.allows(t) for t in range(VOCAB.size)] == mask.tolist()
    st = G.start()
    assert st.push(5) is st and st.push(VOCAB.special["<boa>"]).modality == "audio"


def test_errors_say_where_the_walk_stands():
    boi = VOCAB.special["<boi>"]
    cases = [([VOCAB.eos], 3, "after <eos>"),
             ([], VOCAB.special["<eoi>"], "outside spans"),
             ([boi, VOCAB.size_token(2)], 0, r"in a image span, header \[2\], 0 codes\)"),
             ([boi, VOCAB.size_token(2), VOCAB.size_token(1)], 0, r"in a image span, header \[2, 1\], 0 of 4 codes\)"),
             ([VOCAB.special["<boa>"], VOCAB.code_range("audio", 0)[0]], 0, r"in a audio span, header \[\], 1 codes\)")]
    for prefix, t, where in cases:
        with pytest.raises(ValueError, match=f"is not allowed here \\({where}"):
            G.start(prefix).push(t)


def test_range_helpers():
    assert _merge([(5, 7), (0, 3), (3, 4), (6, 9), (12, 13)]) == [(0, 4), (5, 9), (12, 13)]
    assert _merge([(0, 2), (5, 10), (6, 7)]) == [(0, 2), (5, 10)]  # inside the last one
    assert _cut([(0, 10), (20, 30)], [(5, 25)]) == [(0, 5), (25, 30)]
    assert _cut([(0, 10)], [(0, 3), (8, 12)]) == [(3, 8)]
