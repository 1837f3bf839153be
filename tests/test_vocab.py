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


# ------------------------------------------------------------------ found by mutation testing (docs/mutation.md)
class _Tok:
    """What `from_tokenizers` needs of a tokenizer: modality, identity, and text size or codebook spec."""

    def __init__(self, modality, size=0, levels=1, name="t"):
        self.modality, self.vocab_size, self._spec = modality, size, (size, levels)
        self.name = name

    def identity(self):
        return {"type": self.name}

    def codebook_spec(self):
        return CodebookSpec(self.modality, self._spec[0], self._spec[1], self.identity())


def test_modality_ids_are_the_stored_numbers():
    # the per-token modality arrays are saved in token shards as these uint8 values
    p = VOCAB.pack([{"text": [1]}, {"image": np.zeros((1, 1), int)}, {"video": np.zeros((1, 1, 1), int)},
                    {"audio": np.zeros((4, 1), int)}], bos=False, eos=False)
    assert p.modality.dtype == np.uint8
    assert p.modality.tolist() == [0] + [1] * 5 + [2] * 6 + [3] * 6


def test_token_names_at_every_range_boundary():
    v = VOCAB
    s0, m0 = v.size_start, v.code_range("image")[0]
    names = {0: "text:0", 99: "text:99", 100: "<bos>", 101: "<eos>", 102: "<pad>", 108: "<eoa>",
             s0: "<size:1>", s0 + 15: "<size:16>", m0: "image:L0:0", m0 - 1: "<size:16>",
             v.code_range("audio", 3)[1] - 1: "audio:L3:15", v.size: f"<invalid:{v.size}>", -1: "<invalid:-1>"}
    assert {i: v.token_name(i) for i in names} == names
    assert (v.bos, v.eos, v.pad) == (100, 101, 102)
    assert v.unpack([v.pad, 3, v.pad, v.bos, 4, v.eos]).segments == [{"text": [3, 4]}]


def test_unpacked_ok_and_empty_inputs():
    assert VOCAB.unpack(VOCAB.pack([{"text": [1]}]).ids).ok
    assert not VOCAB.unpack([VOCAB.special["<eoi>"]]).ok
    empty = VOCAB.pack([], bos=False, eos=False)
    assert len(empty) == 0 and len(empty.modality) == 0
    assert empty.ids.dtype == np.int64 and empty.modality.dtype == np.uint8
    for ids in ([], np.zeros(0, np.int64), torch.zeros(0, dtype=torch.long)):
        out = VOCAB.unpack(ids)
        assert out.segments == [] and out.ok
    assert VOCAB.unpack(torch.tensor([5, 6])).segments == [{"text": [5, 6]}]
    assert VOCAB.pack([{"text": []}], bos=False, eos=False).ids.tolist() == []
    with pytest.raises(ValueError, match="integer codes"):
        VOCAB.pack([{"image": np.zeros((2, 2))}])


def test_constructor_limits_and_defaults():
    v = UnifiedVocab(10)
    assert v.max_size == 1024 and v.size == 10 + 9 + 1024
    assert UnifiedVocab(0, [CodebookSpec("image", 1)], max_size=1).size == 9 + 1 + 1  # no text, one code
    for bad in (dict(text_size=-1), dict(text_size=1, max_size=0)):
        with pytest.raises(ValueError):
            UnifiedVocab(**bad)
    for size, levels in ((0, 1), (4, 0)):
        with pytest.raises(ValueError, match="size and levels"):
            CodebookSpec("image", size, levels)
    with pytest.raises(ValueError, match="modality"):
        CodebookSpec("smell", 4)
    spec = CodebookSpec("image", 4)
    with pytest.raises(AttributeError):  # frozen: a spec shared by vocabularies cannot change under them
        spec.size = 8
    assert repr(VOCAB) == f"UnifiedVocab(size={VOCAB.size}, text=100, image=1x64, video=1x32, audio=4x16)"
    # id dtype: uint16 up to 65,536 ids (ids 0..65535)
    assert UnifiedVocab(65536 - 9 - 1024).id_dtype == np.uint16
    assert UnifiedVocab(65537 - 9 - 1024).id_dtype == np.uint32


def test_size_tokens_up_to_max_size():
    assert VOCAB.size_token(16) == VOCAB.size_start + 15
    for bad in (0, 17):
        with pytest.raises(ValueError, match="max_size"):
            VOCAB.size_token(bad)
    codes = np.arange(16 * 2).reshape(16, 2) % 64
    out = VOCAB.unpack(VOCAB.pack([{"image": codes}]).ids)
    assert out.ok and np.array_equal(out.segments[0]["image"], codes)


def test_segment_shapes_are_checked():
    v = VOCAB
    for doc, msg in (
        (["x"], "one-key dict"),
        ([{"text": [1], "image": 2}], "one-key dict"),
        ([{"text": [-1]}], "text id out of range"),
        ([{"text": [100]}], "text id out of range"),
        ([{"audio": np.zeros((4, 2, 2), int)}], "audio codes must have shape"),
        ([{"audio": np.zeros(8, int)}], "audio codes must have shape"),
        ([{"image": np.zeros((3, 2, 2), int)}], "image codes must have shape"),
        ([{"video": np.zeros((2, 2), int)}], "video codes must have shape"),
    ):
        with pytest.raises(ValueError, match=msg):
            v.pack(doc)
    # single-level codebooks take the grid with or without the level axis
    one = UnifiedVocab(10, [CodebookSpec("image", 8), CodebookSpec("audio", 8)], max_size=4)
    img = np.arange(6).reshape(1, 2, 3)
    aud = np.arange(5).reshape(1, 5)
    p = one.pack([{"image": img}, {"audio": aud}])
    assert np.array_equal(p.ids, one.pack([{"image": img[0]}, {"audio": aud[0]}]).ids)
    segs = one.unpack(p.ids).segments
    assert np.array_equal(segs[0]["image"], img[0]) and segs[1]["audio"].shape == (1, 5)


def test_unpack_codes_of_the_wrong_level_or_past_the_vocabulary():
    v = VOCAB
    a1 = v.code_range("audio", 1)[0]
    out = v.unpack([v.special["<boa>"], a1, a1, v.special["<eoa>"]])
    assert out.segments == [] and "position 1: audio code of level 1 where level 0 was expected" in out.problems[0]
    a0 = v.code_range("audio", 0)[0]
    out = v.unpack([v.special["<boa>"], a0, a0, v.special["<eoa>"]])
    assert out.problems == ["position 2: audio code of level 0 where level 1 was expected; span skipped"]
    # an id just past the last code ends the span and is reported, never indexed
    last = UnifiedVocab(5, [CodebookSpec("image", 4)], max_size=2)
    ids = [last.special["<boi>"], last.size_token(1), last.size_token(1), last.code_range("image")[0], last.size]
    out = last.unpack(ids)
    assert [s["image"].tolist() for s in out.segments] == [[[0]]]
    assert any("not closed" in p for p in out.problems) and any("<invalid:" in p for p in out.problems)


def test_manifest_ranges_hash_and_diffs(tmp_path):
    v = VOCAB
    m = v.manifest()
    s0, m0 = v.size_start, v._media_start
    assert m["ranges"] == {"text": [0, 100], "special": [100, s0], "size": [s0, m0], "image/0": [m0, m0 + 64],
                           "video/0": [m0 + 64, m0 + 96], **{f"audio/{i}": [m0 + 96 + 16 * i, m0 + 112 + 16 * i]
                                                              for i in range(4)}}
    assert m["total_size"] == v.size == m0 + 160
    assert isinstance(v.hash, str) and len(v.hash) == 64 and v.hash == m["hash"]
    assert v.hash != UnifiedVocab(100, max_size=16).hash
    assert v.save(tmp_path / "a" / "b" / "vocab.json").is_file()  # parent folders are created
    # differences are named, in both directions, and only the differing leaves
    other = UnifiedVocab(100, [CodebookSpec("image", 128), CodebookSpec("video", 32)], max_size=16)
    with pytest.raises(VocabMismatchError) as e:
        v.check_same(other, what="ckpt")
    msg = str(e.value)
    assert msg.startswith(f"ckpt was built with a different vocabulary (hash {other.hash[:12]} vs {v.hash[:12]}): ")
    assert "codebooks.image.size: 128 vs 64" in msg and "codebooks.audio missing in theirs" in msg
    assert "format" not in msg and "special_tokens" not in msg
    with pytest.raises(VocabMismatchError, match="codebooks.audio only in theirs"):
        other.check_same(v)
    with pytest.raises(VocabMismatchError, match="codebooks: 'none' vs"):
        v.check_same({**m, "codebooks": "none", "hash": "x"})


def test_from_tokenizers_and_check_tokenizers():
    toks = {"text": _Tok("text", 50, name="sp"), "image": _Tok("image", 8), "audio": _Tok("audio", 4, levels=2)}
    v = UnifiedVocab.from_tokenizers(toks)
    assert isinstance(v, UnifiedVocab) and v.text_size == 50 and v.max_size == 1024
    assert v.text_tokenizer == {"type": "sp"} and {m: (c.size, c.levels) for m, c in v.codebooks.items()} == {
        "image": (8, 1), "audio": (4, 2)}
    assert UnifiedVocab.from_tokenizers(list(toks.values())).hash == v.hash  # a list works like a dict
    media = UnifiedVocab.from_tokenizers([_Tok("image", 8)], max_size=4)
    assert media.text_size == 0 and media.text_tokenizer == {} and media.max_size == 4
    with pytest.raises(ValueError, match="more than one text tokenizer"):
        UnifiedVocab.from_tokenizers([_Tok("text", 5), _Tok("text", 5)])
    v.check_tokenizers(toks)
    with pytest.raises(VocabMismatchError, match="text.tokenizer.type: 'sp' vs 'other'"):
        v.check_tokenizers({**toks, "text": _Tok("text", 50, name="other")}, what="tokenizers")


def test_stray_tokens_are_reported_per_run():
    v = VOCAB
    eoi, pad = v.special["<eoi>"], v.special["<eoi>"] - 2
    assert v.special["<pad>"] == pad
    # a skipped special token ends a run of strays, as text does
    assert v.unpack([eoi, pad, eoi]).problems == ["position 0: <eoi> without a matching begin marker; skipped",
                                                  "position 2: <eoi> without a matching begin marker; skipped"]
    img = v.pack([{"image": np.ones((1, 2), int)}], bos=False, eos=False).ids
    out = v.unpack(np.concatenate([[eoi], img]))
    assert out.problems == ["position 0: <eoi> without a matching begin marker; skipped"]
    assert [s["image"].tolist() for s in out.segments] == [[[1, 1]]]
    assert v.unpack([v.code_range("image")[0], 1]).problems == [
        "position 0: unexpected token image:L0:0 outside a span; skipped"]
    with pytest.raises(ValueError, match=r"image grid \(0, 2\) outside \[1, 16\]"):
        v.pack([{"image": np.zeros((0, 2), int)}])
    # a code id where a size token belongs is not a size
    m0 = v.code_range("image")[0]
    out = v.unpack([v.special["<boi>"], v.size_token(1), m0, m0, eoi])
    assert out.segments == [] and "image span header incomplete (got image:L0:0)" in out.problems[0]


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"image codes must have shape \(H, W\), got \(3, 2, 2\)"):
        VOCAB.pack([{"image": np.zeros((3, 2, 2), int)}])
    rvq = UnifiedVocab(10, [CodebookSpec("video", 8, levels=2)], max_size=4)
    with pytest.raises(ValueError, match=r"video codes must have shape \(2, \.\.\.\), got \(2, 2, 2\)"):
        rvq.pack([{"video": np.zeros((2, 2, 2), int)}])


def test_mismatch_message_lists_four_differences_then_counts():
    base = UnifiedVocab(10, max_size=4)
    # codebooks.image, ranges.image/0, ranges.image/1, total_size
    with pytest.raises(VocabMismatchError) as e:
        base.check_same(UnifiedVocab(10, [CodebookSpec("image", 4, levels=2)], max_size=4))
    assert "more" not in str(e.value) and str(e.value).count(";") == 3
    with pytest.raises(VocabMismatchError, match="; and 1 more$") as e:
        base.check_same(UnifiedVocab(10, [CodebookSpec("image", 4, levels=3)], max_size=4))
    assert str(e.value).count(";") == 4  # four named, then the count
