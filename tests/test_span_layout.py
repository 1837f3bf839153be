"""The span layout is data on each vocabulary (`vocab.spans`, `UNITOK_SPANS` by default): only vocab.py
spells the markers; a manifest written before the layout was recorded loads as the default layout
and keeps its hash; a vocabulary with another layout works end to end (pack, unpack, grammar,
guidance, packed batches, the pipeline), so the users read the instance's data; the token shards'
dtype is the vocabulary's `id_dtype`."""

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT
from unitok.errors import CheckpointError, VocabMismatchError
from unitok.vocab import UNITOK_SPANS, CodebookSpec, Modality, SpanFormat, UnifiedVocab

OLD_MANIFEST = ROOT / "tests" / "assets" / "vocab" / "before-span-layout.json"


# ------------------------------------------------------------------ one owner
def _docstrings(tree) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def test_only_vocab_py_spells_a_span_marker():
    markers = [t for f in UNITOK_SPANS.values() for t in (f.begin, f.end)]
    assert len(markers) == 6
    spelled = {}
    for path in sorted((ROOT / "unitok").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):  # f-string pieces are Constants too
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for m in markers:
                    if m in node.value:
                        spelled.setdefault(str(path.relative_to(ROOT)), set()).add(m)
    assert spelled == {"unitok/vocab.py": set(markers)}


# ------------------------------------------------------------------ old manifests
def _old_content(**kw) -> UnifiedVocab:
    """The vocabulary the fixture was written from (by the code before `spans` was recorded)."""
    books = [CodebookSpec("image", 64, tokenizer={"type": "vqgan", "sha256": "ab12"}), CodebookSpec("video", 32),
             CodebookSpec("audio", 16, levels=4, tokenizer={"type": "encodec"})]
    return UnifiedVocab(100, books, max_size=16, text_tokenizer={"type": "sentencepiece", "sha256": "cd34"}, **kw)


def test_a_manifest_without_spans_loads_as_the_default_layout_and_keeps_its_hash(tmp_path):
    old = json.loads(OLD_MANIFEST.read_text())
    assert "spans" not in old
    v = UnifiedVocab.load(OLD_MANIFEST)
    assert v.spans == dict(UNITOK_SPANS) and v.hash == old["hash"]
    now = _old_content()
    assert now.hash == old["hash"] and "spans" in now.manifest()
    now.check_same(old, what="old shards")  # shards and checkpoints written before keep loading
    now.check_same(v)
    v.check_same(now)
    # a difference elsewhere is named alone: the absent layout is the default, not a difference
    with pytest.raises(VocabMismatchError) as e:
        UnifiedVocab(100, [CodebookSpec("image", 64)], max_size=16).check_same(old)
    assert "spans" not in str(e.value) and "codebooks.audio" in str(e.value)
    # today's manifest of that content loads too, and so does it without its (default) spans
    now.save(tmp_path / "now.json")
    assert UnifiedVocab.load(tmp_path / "now.json").hash == old["hash"]
    bare = {k: v for k, v in now.manifest().items() if k != "spans"}
    assert UnifiedVocab.from_manifest(bare).spans == dict(UNITOK_SPANS)
    # another layout cannot pass for an old manifest: a layout other than the default is hashed
    other = {**UNITOK_SPANS, "audio": SpanFormat("<snd>", "</snd>", grid=("T",))}
    edited = {**old, "spans": {m: f.to_json() for m, f in other.items()}}
    with pytest.raises(CheckpointError, match="hash"):
        UnifiedVocab.from_manifest(edited)


def test_vocab_show_prints_the_layout_and_the_dtype(capsys):
    from unitok.cli import main

    assert main(["vocab", "show", str(OLD_MANIFEST)]) == 0
    out = capsys.readouterr().out
    assert "  video span: <bov> <size:T> <size:H> <size:W> codes <eov>\n  audio span: <boa> codes <eoa>\n" in out
    assert "token shards uint16, hash 0d3e826bb7c0" in out


def test_another_layout_is_recorded_hashed_and_checked(tmp_path):
    other = {**UNITOK_SPANS, "video": SpanFormat("<clip>", "</clip>", grid=("T", "H", "W"), header=("T", "H", "W"))}
    v, default = _old_content(spans=other), _old_content()
    assert v.size == default.size and v.hash != default.hash
    w = UnifiedVocab.load(v.save(tmp_path / "vocab.json"))
    assert w.spans == v.spans and w.hash == v.hash and w.special["<clip>"] == v.marker_ids["video"][0]
    with pytest.raises(VocabMismatchError, match=r"spans\.video\.begin: '<clip>' vs '<bov>'"):
        default.check_same(v)
    path = tmp_path / "vocab.json"
    path.write_text(path.read_text().replace("</clip>", "</movie>"))
    with pytest.raises(CheckpointError, match="hash"):
        UnifiedVocab.load(path)


def test_span_formats_and_layouts_are_checked():
    with pytest.raises(ValueError, match="must differ"):
        SpanFormat("<x>", "<x>", grid=("T",))
    with pytest.raises(ValueError, match="whole grid"):
        SpanFormat("<x>", "</x>", grid=("H", "W"), header=("H",))
    with pytest.raises(ValueError, match="whole grid"):  # a headerless grid needs fixed sizes
        SpanFormat("<x>", "</x>", grid=("H", "W"))
    assert SpanFormat("<x>", "</x>", grid=("T",)).open and not UNITOK_SPANS["image"].open
    with pytest.raises(ValueError, match="no span format for the image codebook"):
        UnifiedVocab(10, [CodebookSpec("image", 4)], spans={"audio": UNITOK_SPANS["audio"]})
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        UnifiedVocab(10, spans={"smell": UNITOK_SPANS["audio"]})
    with pytest.raises(ValueError, match="distinct"):
        UnifiedVocab(10, spans={"image": UNITOK_SPANS["image"], "audio": SpanFormat("<eoi>", "<eoa>", grid=("T",))})
    with pytest.raises(ValueError, match=r"holds 2 sizes \('H', 'W'\), got \[3\]"):
        UnifiedVocab(10).span_head("image", [3])


# ------------------------------------------------------------------ an imported model's layout
def test_a_fixed_grid_inside_the_text_range():
    """Chameleon's layout: image codes among the text ids (2 levels of 8 from id 4), markers that are
    text ids, and a 2 x 3 grid without a header. It packs, unpacks, names its ids, round-trips its
    manifest, and the grammar keeps text off those ids and a span at exactly 2 x 3 x 2 codes."""
    from unitok.grammar import SpanGrammar

    fixed = {"image": SpanFormat("<boi>", "<eoi>", grid=("H", "W"), sizes=(2, 3))}
    v = UnifiedVocab(40, [CodebookSpec("image", 8, levels=2)], max_size=0, spans=fixed, code_ids={"image": 4},
                     specials={"<bos>": 0, "<eos>": 1, "<pad>": 1, "<boi>": 21, "<eoi>": 20})
    assert (v.size, v.code_range("image", 0), v.code_range("image", 1), v.marker_ids["image"]) == (40, (4, 12), (12, 20),
                                                                                                  (21, 20))
    assert [v.token_name(i) for i in (3, 4, 19, 20, 22)] == ["text:3", "image:L0:0", "image:L1:7", "<eoi>", "text:22"]
    codes = np.arange(12).reshape(2, 2, 3) % 8
    p = v.pack([{"text": [2, 30]}, {"image": codes}, {"text": [3]}])
    assert p.ids.tolist() == [0, 2, 30, 21, *(codes.reshape(2, -1).T + [4, 12]).reshape(-1), 20, 3, 1]
    un = v.unpack(p.ids)
    assert un.ok and np.array_equal(un.segments[1]["image"], codes) and un.segments[2] == {"text": [3]}
    assert "image span of grid (2, 3) needs 12 codes, got 10" in v.unpack(np.delete(p.ids, [4, 5])).problems[0]
    assert "outside a span" in v.unpack([0, 5, 1]).problems[0]  # a code is never text
    assert v.span_head("image") == v.span_head("image", (2, 3)) == [21]
    with pytest.raises(ValueError, match=r"fixed grid \(2, 3\), got \(3, 3\)"):
        v.span_head("image", (3, 3))
    again = UnifiedVocab.from_manifest(v.manifest())
    assert again.hash == v.hash and again.spans == v.spans and again.code_ids == {"image": 4}
    assert v.manifest()["spans"]["image"]["sizes"] == [2, 3] and "sizes" not in UnifiedVocab(5).manifest()["spans"]["image"]
    g = SpanGrammar(v)
    assert g.start().allowed() == [(0, 4), (21, 40)]  # text and <boi>; not the codes, not <eoi>
    st = g.start([0, 21])
    for i in range(12):
        assert st.allowed() == [v.code_range("image", i % 2)]
        st.push(v.code_range("image", i % 2)[0])
    assert st.allowed() == [(20, 21)]
    assert g.start().fitting([(21, 22)], 13) == [] and g.start().fitting([(21, 22)], 14) == [(21, 22)]
    with pytest.raises(ValueError, match="overlap <boi>"):
        UnifiedVocab(40, [CodebookSpec("image", 8, levels=3)], max_size=0, spans=fixed, code_ids={"image": 4},
                     specials={"<boi>": 21, "<eoi>": 20})
    with pytest.raises(ValueError, match=r"must lie in the text range \[0, 40\)"):
        UnifiedVocab(40, [CodebookSpec("image", 8)], max_size=0, spans=fixed, code_ids={"image": 35})
    with pytest.raises(ValueError, match="one size per grid axis"):
        SpanFormat("<x>", "</x>", grid=("H", "W"), sizes=(2,))


# ------------------------------------------------------------------ another layout, end to end
OTHER = {"image": SpanFormat("<img>", "</img>", grid=("H", "W"), header=("H", "W")),
         "audio": SpanFormat("<snd>", "</snd>", grid=("T",))}
BOOKS = [CodebookSpec("image", 16, levels=2), CodebookSpec("audio", 4, levels=3)]
V = UnifiedVocab(50, BOOKS, max_size=6, spans=OTHER)


def _doc(rng):
    return [{"text": rng.integers(0, 50, 3)}, {"image": rng.integers(0, 16, (2, 2, 3))},
            {"text": rng.integers(0, 50, 2)}, {"audio": rng.integers(0, 4, (3, 4))},
            {"image": rng.integers(0, 16, (2, 1, 2))}]


def test_another_layout_moves_every_id_after_the_text():
    assert V.special_tokens == ("<bos>", "<eos>", "<pad>", "<img>", "</img>", "<snd>", "</snd>")
    default = UnifiedVocab(50, BOOKS, max_size=6)
    # two special tokens fewer: markers, size tokens and codes all sit elsewhere than by the default layout
    assert V.size == default.size - 2 and V.marker_ids["audio"] != default.marker_ids["audio"]
    assert V.span_head("image", (2, 3)) == [V.special["<img>"], V.size_token(2), V.size_token(3)]
    assert V.span_head("audio") == [V.special["<snd>"]]


def test_another_layout_packs_unpacks_and_the_grammar_accepts_it():
    from unitok.grammar import SpanGrammar

    rng = np.random.default_rng(0)
    g = SpanGrammar(V)
    for _ in range(20):
        doc = _doc(rng)
        p = V.pack(doc)
        assert p.ids[4] == V.special["<img>"] and V.special["</snd>"] in p.ids
        un = V.unpack(p.ids)
        assert un.ok and [next(iter(s)) for s in un.segments] == ["text", "image", "text", "audio", "image"]
        assert np.array_equal(un.segments[3]["audio"], doc[3]["audio"])
        st = g.start(p.ids[:-1])
        assert st.modality is None and st.allows(V.eos)
    # inside spans: the header, then exactly the codes, then this layout's end marker
    st = g.start([V.bos, *V.span_head("image", (1, 2))])
    for i in range(4):
        st.push(V.code_range("image", i % 2)[0])
    assert st.allowed() == [(V.special["</img>"], V.special["</img>"] + 1)]
    st = g.start([V.bos, *V.span_head("audio")])
    assert st.allowed() == [V.code_range("audio", 0)]  # no end before a whole frame
    for lvl in range(3):
        st.push(V.code_range("audio", lvl)[0])
    assert (V.special["</snd>"], V.special["</snd>"] + 1) in st.allowed()
    assert g.mask(g.start().allowed())[[V.special["<img>"], V.special["<snd>"]]].all()


def test_another_layout_in_guidance_and_packed_batches():
    from unitok.data.packed import PackedBatches
    from unitok.generation.guidance import modalities, unconditional_prompt

    p = V.pack(_doc(np.random.default_rng(1)))
    assert np.array_equal(modalities(p.ids, V), p.modality)
    uncond = unconditional_prompt(p.ids, V)  # the text before each span is gone, the spans are kept
    assert uncond[1] == V.special["<img>"] and len(uncond) == len(p.ids) - 5

    class Shards:
        path, vocab = Path("memory"), V

        def __len__(self):
            return 1

        def document(self, i):
            return p.ids, p.modality

    b = PackedBatches(Shards(), seq_len=len(p.ids) - 1, batch_size=1, eval_fraction=0, bidirectional_images=True).next()
    assert np.array_equal(b.ids[0].numpy(), p.ids[:-1])
    image = p.modality[:-1] == Modality.IMAGE
    assert np.array_equal(b.span_ids[0].numpy() > 0, image)
    assert set(b.span_ids[0][torch.from_numpy(image)].tolist()) == {1, 2}  # one id per image span


class _Image:
    modality, downsample = "image", 8

    def decode(self, codes):  # (1, L, h, w) -> (1, 3, 8h, 8w)
        return torch.zeros(1, 3, codes.shape[-2] * 8, codes.shape[-1] * 8)


class _Audio:
    modality, hop_length = "audio", 16
    config = SimpleNamespace(sample_rate=160, channels=1)

    def num_frames(self, n):
        return -(-n // self.hop_length)

    def decode(self, codes):  # (1, L, T) -> (1, 1, 16 T)
        return torch.zeros(1, 1, codes.shape[-1] * self.hop_length)


def test_another_layout_in_the_pipeline():
    """Forced spans: the pipeline writes this layout's header, stops at its end marker and reads
    the header back."""
    from unitok.generation import Pipeline
    from unitok.model.config import debug
    from unitok.model.transformer import UnifiedTransformer

    torch.manual_seed(0)
    loaded = SimpleNamespace(kind="transformer", vocab=V, path="memory", state={},
                             model=UnifiedTransformer(debug(vocab_size=V.size, max_seq_len=64)),
                             tokenizers={"image": _Image(), "audio": _Audio()})
    pipe = Pipeline(loaded)
    r = pipe("text-to-image", size=16, n=2, seed=0)
    assert r.prompt_ids == [V.bos, *V.span_head("image", (2, 2))]
    for s in r.samples:
        assert s.ids[-1] == V.special["</img>"] and len(s.ids) == 2 * 2 * 2 + 1
        assert s.span == {"modality": "image", "header": [2, 2], "codes_shape": [2, 2, 2], "generated_codes": 8}
        assert s.media.shape == (16, 16, 3)
    r = pipe("text-to-audio", seconds=0.5, seed=0)  # 80 samples: 5 frames of 3 levels
    assert r.prompt_ids == [V.bos, V.special["<snd>"]]
    s = r.samples[0]
    assert s.ids[-1] == V.special["</snd>"] and s.span["codes_shape"] == [3, 5] and s.media.shape == (1, 80)
    # without seconds the model closes the span (well before the 20 frames the context holds): the
    # end marker is a stop id, so nothing follows it
    r = pipe("text-to-audio", n=4, seed=0)
    assert r.settings["max_frames"] == 20
    for s in r.samples:
        frames = s.span["codes_shape"][1]
        assert s.ids[-1] == V.special["</snd>"] and len(s.ids) == 3 * frames + 1 and frames < 20


# ------------------------------------------------------------------ the ids' dtype
def test_id_dtype_at_the_uint16_limit_whatever_the_layout():
    for spans in (None, OTHER):
        n_special = len(UnifiedVocab(0, spans=spans).special_tokens)
        assert UnifiedVocab(65536 - n_special - 1024, spans=spans).id_dtype == np.uint16  # ids 0..65535
        assert UnifiedVocab(65537 - n_special - 1024, spans=spans).id_dtype == np.uint32


def test_pretokenize_writes_the_vocabularys_id_dtype(tmp_path):
    """Two levels of 65,536 audio codes: every level-1 id is above 65,535, so shards of the wrong
    dtype would wrap them into level 0 and the document would not unpack."""
    import soundfile as sf

    from unitok.data.pretokenize import pretokenize
    from unitok.data.shards import read_shards
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig

    torch.manual_seed(0)
    AudioTokenizer(AudioTokenizerConfig.tiny(codebook_size=65536, levels=2)).save_pretrained(tmp_path / "tok")
    (tmp_path / "data").mkdir()
    t = np.arange(4800) / 16000
    sf.write(tmp_path / "data" / "tone.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    stats = pretokenize([str(tmp_path / "data")], [str(tmp_path / "tok")], tmp_path / "shards", progress=False)
    sh = read_shards(tmp_path / "shards")
    assert sh.vocab.id_dtype == np.uint32 and stats["dtype"] == "uint32"
    assert (tmp_path / "shards" / "tokens.bin").stat().st_size == 4 * stats["tokens"]
    ids, _ = sh.document(0)
    assert int(np.max(ids)) >= 65536
    un = sh.vocab.unpack(np.asarray(ids))
    assert un.ok and un.segments[0]["audio"].shape == (2, 75)  # 4,800 samples at hop 64
