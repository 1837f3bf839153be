"""The vocabulary grammar: every packed document is accepted token by token, and every walk that
only takes allowed ids unpacks into whole spans of the shapes their headers announce."""

import numpy as np
import pytest

from unitok.grammar import SpanGrammar
from unitok.vocab import CodebookSpec, UnifiedVocab

VOCAB = UnifiedVocab(50, [CodebookSpec("image", 16, levels=2), CodebookSpec("video", 8),
                          CodebookSpec("audio", 4, levels=3)], max_size=6)


def test_packed_documents_are_accepted():
    rng = np.random.default_rng(0)
    g = SpanGrammar(VOCAB)
    for _ in range(50):
        doc = [{"text": rng.integers(0, 50, rng.integers(0, 5))},
               {"image": rng.integers(0, 16, (2, rng.integers(1, 4), rng.integers(1, 4)))},
               {"audio": rng.integers(0, 4, (3, rng.integers(1, 5)))},
               {"video": rng.integers(0, 8, (rng.integers(1, 3), 2, 2))}]
        ids = VOCAB.pack([s for s in doc if rng.random() < 0.8]).ids
        st = g.start(ids[:-1])
        assert st.modality is None and st.allows(VOCAB.eos)
        st.push(ids[-1])
        assert st.ended and st.allowed() == []


def test_random_walks_unpack_to_whole_spans():
    rng = np.random.default_rng(1)
    g = SpanGrammar(VOCAB)
    for _ in range(200):
        st, ids = g.start(), [VOCAB.bos]
        for _ in range(rng.integers(1, 60)):
            ranges = st.allowed()
            if st.modality and len(st.sizes) < {"image": 2, "video": 3, "audio": 0}[st.modality]:
                t = VOCAB.size_start + int(rng.integers(0, 3))  # small grids
            else:
                lo, hi = ranges[rng.integers(0, len(ranges))]
                t = int(rng.integers(lo, hi))
                if t == VOCAB.eos:
                    continue
            st.push(t)
            ids.append(t)
        while st.modality is not None:  # close the open span the shortest allowed way
            lo, hi = st.allowed()[-1] if st.modality == "audio" and st.codes % 3 == 0 and st.codes else st.allowed()[0]
            st.push(lo)
            ids.append(lo)
        un = VOCAB.unpack(ids + [VOCAB.eos])
        assert not un.problems, (un.problems, ids)
        for seg in un.segments:
            (kind, codes), = seg.items()
            if kind == "image":
                assert codes.shape[0] == 2 and codes.ndim == 3
            if kind == "audio":
                assert codes.shape[0] == 3 and codes.shape[1] >= 1


def test_rules_and_errors():
    g = SpanGrammar(VOCAB)
    st = g.start([VOCAB.bos, 3, VOCAB.special["<boa>"]])
    assert st.allowed() == [VOCAB.code_range("audio", 0)]  # no <eoa> before a whole frame
    for lvl in range(3):
        st.push(VOCAB.code_range("audio", lvl)[0])
    assert (VOCAB.special["<eoa>"], VOCAB.special["<eoa>"] + 1) in st.allowed()
    st.push(VOCAB.code_range("audio", 0)[0])
    assert st.allowed() == [VOCAB.code_range("audio", 1)]  # mid-frame: the next level only
    with pytest.raises(ValueError, match="not allowed here.*in a audio span"):
        st.push(VOCAB.special["<eoa>"])
    img = g.start([VOCAB.special["<boi>"], VOCAB.size_token(1), VOCAB.size_token(2)])
    assert img.expected_codes() == 4
    for t in (0, 0, 0, 0):
        img.push(VOCAB.code_range("image", img.codes % 2)[0] + t)
    assert img.allowed() == [(VOCAB.special["<eoi>"], VOCAB.special["<eoi>"] + 1)]
    mask = g.mask(g.start().allowed())
    assert mask[:50].all() and mask[VOCAB.eos] and not mask[VOCAB.special["<eoi>"]] and not mask[VOCAB.bos]
    assert int(mask.sum()) == 50 + 1 + 3


def test_constrained_sampling_from_an_untrained_model_always_decodes():
    """An untrained model, many seeds: the sampled image span has exactly the announced grid and
    levels, and audio spans close on frame boundaries."""
    import torch

    from unitok.generation.sample import generate
    from unitok.model.config import debug
    from unitok.model.transformer import UnifiedTransformer

    torch.manual_seed(0)
    model = UnifiedTransformer(debug(vocab_size=VOCAB.size, max_seq_len=128))
    g = SpanGrammar(VOCAB)
    boi, s2, s3 = VOCAB.special["<boi>"], VOCAB.size_token(2), VOCAB.size_token(3)
    for seed in range(8):
        prompt = [VOCAB.bos, 5, 7, boi, s2, s3]
        ids = generate(model, prompt, 100, temperature=1.0, seed=seed, grammar=g.start(prompt))
        un = VOCAB.unpack(prompt + ids)
        assert not un.problems, un.problems
        img = next(s["image"] for s in un.segments if "image" in s)
        assert img.shape == (2, 2, 3)
        for s in un.segments:
            if "audio" in s:
                assert s["audio"].shape[0] == 3


def test_text_only_grammar_and_fixed_audio_length():
    """`spans=()` opens no span (a prefix may still hold one); `frames` closes an audio span at exactly
    that many frames, not before."""
    t = SpanGrammar(VOCAB, spans=())
    img = VOCAB.pack([{"image": np.zeros((2, 1, 1), np.int64)}], bos=False, eos=False).ids
    st = t.start([VOCAB.bos, *img, 3])
    assert st.allowed() == [(0, 50), (VOCAB.eos, VOCAB.eos + 1)]
    assert SpanGrammar(VOCAB, spans=("audio",)).start().allows(VOCAB.special["<boa>"])
    with pytest.raises(ValueError, match="no smell codebook"):
        SpanGrammar(VOCAB, spans=("smell",))
    a = SpanGrammar(VOCAB).start([VOCAB.bos, VOCAB.special["<boa>"]])
    a.frames = 2
    eoa = (VOCAB.special["<eoa>"], VOCAB.special["<eoa>"] + 1)
    for i in range(6):
        assert eoa not in a.allowed() and a.expected_codes() == 6
        a.push(VOCAB.code_range("audio", i % 3)[0])
    assert a.allowed() == [eoa]
    a.push(eoa[0])
    assert a.modality is None and a.frames is None
