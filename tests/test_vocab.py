import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from unitok.errors import CheckpointError, VocabMismatchError
from unitok.vocab import CodebookSpec, Modality, UnifiedVocab


def make_vocab(**kw):
    books = [CodebookSpec("image", 64), CodebookSpec("video", 32), CodebookSpec("audio", 16, levels=4)]
    return UnifiedVocab(text_size=100, codebooks=books, max_size=16, **kw)


VOCAB = make_vocab()


def seg_strategy():
    text = st.lists(st.integers(0, 99), min_size=1, max_size=12).map(lambda x: {"text": x})
    image = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**31)).map(
        lambda t: {"image": np.random.default_rng(t[2]).integers(0, 64, (t[0], t[1]))})
    video = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31)).map(
        lambda t: {"video": np.random.default_rng(t[3]).integers(0, 32, t[:3])})
    audio = st.tuples(st.integers(1, 8), st.integers(0, 2**31)).map(
        lambda t: {"audio": np.random.default_rng(t[1]).integers(0, 16, (4, t[0]))})
    return st.one_of(text, image, video, audio)


def merge_text(doc):
    out = []
    for s in doc:
        if "text" in s and out and "text" in out[-1]:
            out[-1] = {"text": out[-1]["text"] + s["text"]}
        else:
            out.append(s)
    return out


def same_segments(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        (kx, vx), = x.items()
        (ky, vy), = y.items()
        assert kx == ky
        np.testing.assert_array_equal(np.asarray(vx), np.asarray(vy))


@settings(max_examples=300, deadline=None)
@given(st.lists(seg_strategy(), max_size=8))
def test_pack_unpack_identity(doc):
    packed = VOCAB.pack(doc)
    assert packed.ids.shape == packed.modality.shape
    assert packed.ids.min() >= 0 and packed.ids.max() < VOCAB.size
    out = VOCAB.unpack(packed.ids)
    assert out.problems == []
    same_segments(out.segments, merge_text(doc))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(-5, VOCAB.size + 5), max_size=64))
def test_unpack_random_ids_never_raises(ids):
    out = VOCAB.unpack(np.array(ids, dtype=np.int64))
    for s in out.segments:
        (k, v), = s.items()
        assert k in ("text", "image", "video", "audio")


def _layout(doc):
    """(kind, value, start, end) of each segment in `VOCAB.pack(doc, eos=False).ids`: ids[start:end]
    are its tokens (a media span's begin marker at `start`, its end marker at `end - 1`)."""
    out, pos = [], 1  # <bos>
    for s in doc:
        (kind, value), = s.items()
        n = len(value) if kind == "text" else len(VOCAB.pack([s], bos=False, eos=False).ids)
        out.append((kind, value, pos, pos + n))
        pos += n
    return out


def expected_prefix(doc, cut):
    """What `unpack(ids[:cut])` must return: every segment that ends before the cut; of the segment
    the cut falls in, the text ids before the cut, an audio span's whole frames (if any), an image or
    video span only when all its codes are there (the end marker alone is missing)."""
    want = []
    for kind, value, start, end in _layout(doc):
        if end <= cut:
            want.append({kind: value})
        elif start < cut:
            have = cut - start
            if kind == "text" and have:
                want.append({"text": value[:have]})
            elif kind == "audio" and (have - 1) // 4:
                want.append({"audio": np.asarray(value)[:, : (have - 1) // 4]})
            elif kind in ("image", "video") and have == end - start - 1:
                want.append({kind: value})
            break
        else:
            break
    return merge_text(want)


def cuts_a_span(doc, cut):
    """True when ids[:cut] holds a media span's begin marker but not its end marker."""
    return any(kind != "text" and start < cut < end for kind, _, start, end in _layout(doc))


@settings(max_examples=150, deadline=None)
@given(st.lists(seg_strategy(), min_size=1, max_size=6))
def test_unpack_truncated_reports_problems(doc):
    """Cut the packed ids at every position: a cut inside a media span (after its begin marker, before
    its end marker) is reported in `problems`, any other cut is clean; the segments are the prefix of
    the document that the kept ids encode."""
    ids = VOCAB.pack(doc, eos=False).ids
    assert _layout(doc)[-1][3] == len(ids)
    for cut in range(len(ids) + 1):
        out = VOCAB.unpack(ids[:cut])  # must not raise
        if cuts_a_span(doc, cut):
            assert out.problems, (cut, ids[:cut])
        else:
            assert out.problems == [], (cut, out.problems)
        same_segments(out.segments, expected_prefix(doc, cut))


def test_layout_and_modalities():
    v = VOCAB
    assert v.bos == 100 and v.code_range("image") == (100 + 9 + 16, 100 + 9 + 16 + 64)
    # one range per RVQ level, contiguous
    starts = [v.code_range("audio", lvl)[0] for lvl in range(4)]
    assert np.all(np.diff(starts) == 16)
    doc = [{"text": [1, 2]}, {"image": torch.zeros(2, 3, dtype=torch.long)}, {"audio": np.ones((4, 2), int)}]
    p = v.pack(doc)
    # <bos> t t <boi> <size:2> <size:3> 6 codes <eoi> <boa> 8 codes <eoa> <eos>
    assert len(p) == 1 + 2 + 1 + 2 + 6 + 1 + 1 + 8 + 1 + 1
    assert list(p.modality[:3]) == [Modality.TEXT] * 3
    assert set(p.modality[3:13]) == {Modality.IMAGE}
    assert set(p.modality[13:23]) == {Modality.AUDIO}
    assert v.token_name(p.ids[4]) == "<size:2>"
    assert v.token_name(p.ids[14]) == "audio:L0:1" and v.token_name(p.ids[15]) == "audio:L1:1"
    assert v.id_dtype == np.uint16
    assert UnifiedVocab(70000).id_dtype == np.uint32


def test_text_strings_need_tokenizer():
    class Chars:
        def encode(self, s):
            return [ord(c) % 100 for c in s]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    with pytest.raises(ValueError, match="text_tokenizer"):
        VOCAB.pack([{"text": "hi"}])
    p = VOCAB.pack([{"text": "ab"}], text_tokenizer=Chars())
    assert VOCAB.unpack(p.ids, text_tokenizer=Chars()).segments == [{"text": "ab"}]


def test_bad_segments_are_clear_errors():
    with pytest.raises(ValueError, match="out of range"):
        VOCAB.pack([{"image": np.full((2, 2), 64)}])
    with pytest.raises(ValueError, match="shape"):
        VOCAB.pack([{"audio": np.zeros((3, 5), int)}])
    with pytest.raises(ValueError, match="unknown segment kind"):
        VOCAB.pack([{"smell": 1}])
    with pytest.raises(ValueError, match="max_size"):
        VOCAB.pack([{"image": np.zeros((17, 2), int)}])


def test_malformed_sequences_report_problems():
    v = VOCAB
    img = v.pack([{"image": np.arange(6).reshape(2, 3)}], bos=False, eos=False).ids
    out = v.unpack(img[:-3])  # truncated image
    assert out.segments == [] and "needs 6 codes, got 4" in out.problems[0]
    aud = v.pack([{"audio": np.arange(12).reshape(4, 3) % 16}], bos=False, eos=False).ids
    out = v.unpack(aud[:-3])  # truncated inside frame 2, no <eoa>
    assert out.segments[0]["audio"].shape == (4, 2)
    assert any("inside a frame" in p for p in out.problems)
    out = v.unpack([v.special["<eoi>"], 5, v.code_range("image")[0], v.code_range("image")[0]])
    assert out.segments == [{"text": [5]}]
    assert len(out.problems) == 2 and "positions 2-3" in out.problems[1]


def test_manifest_roundtrip_and_mismatch(tmp_path):
    v = make_vocab(text_tokenizer={"type": "x", "sha256": "abc"})
    path = v.save(tmp_path / "vocab.json")
    w = UnifiedVocab.load(path)
    assert w.hash == v.hash and w.size == v.size
    v.check_same(w)
    other = UnifiedVocab(100, [CodebookSpec("image", 128)], max_size=16)
    with pytest.raises(VocabMismatchError, match="codebooks"):
        v.check_same(other, what="checkpoint")
    # an edited manifest is caught by its hash
    path.write_text(path.read_text().replace('"size": 64', '"size": 65'))
    with pytest.raises(CheckpointError, match="hash"):
        UnifiedVocab.load(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        UnifiedVocab.load(path)
