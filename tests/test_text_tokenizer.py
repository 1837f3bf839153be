import json

import pytest
from hypothesis import given, settings, strategies as st

from unitok.errors import CheckpointError, DataError
from unitok.tokenizers import load_tokenizer
from unitok.tokenizers.text import TextTokenizer

CORPUS = ("The quick brown fox jumps over the lazy dog. " * 3 + "\n"
          "Pack my box with five dozen liquor jugs!\n  indented line\n"
          "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.\n") * 50


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    p = tmp_path_factory.mktemp("spm") / "corpus.txt"
    p.write_text(CORPUS)
    return TextTokenizer.train([p], vocab_size=400)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_roundtrip_awkward_strings(tok):
    for s in ["", " ", "  two  spaces ", "\u2581", "a\u2581 b\u2581\u2581", "\x00\r\n\t", "🎉日本", "\ud7ff"]:
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox") / 2


def test_save_load(tok, tmp_path):
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert isinstance(again, TextTokenizer)
    assert again.encode("hello fox") == tok.encode("hello fox")
    assert again.identity() == tok.identity() and again.codebook_sizes == [400]
    (tmp_path / "t" / "spm.model").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="does not match|not a valid"):
        TextTokenizer.from_pretrained(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg.pop("sha256")
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a valid SentencePiece"):
        TextTokenizer.from_pretrained(tmp_path / "t")


def test_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TextTokenizer.train([tmp_path / "missing.txt"])
    (tmp_path / "tiny.txt").write_text("ab\n")
    with pytest.raises(DataError, match="Vocabulary size"):
        TextTokenizer.train([tmp_path / "tiny.txt"], vocab_size=8000)
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "nothing")


@pytest.mark.slow
def test_shakespeare_8k_under_60s(shared_data):
    import time

    t0 = time.perf_counter()
    tok = TextTokenizer.train([shared_data / "text" / "tinyshakespeare.txt"], vocab_size=8000)
    assert time.perf_counter() - t0 < 60
    assert tok.vocab_size == 8000
    text = (shared_data / "text" / "tinyshakespeare.txt").read_text()[:20000]
    assert tok.decode(tok.encode(text)) == text
