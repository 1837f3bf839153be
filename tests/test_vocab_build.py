"""`unitok vocab build`: the vocabulary of any set of saved tokenizers, identified by their weights."""

import pytest
import torch

from unitok.cli import main
from unitok.errors import VocabMismatchError
from unitok.vocab import UnifiedVocab


@pytest.fixture
def tokenizers(tmp_path):
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.text import TextTokenizer

    (tmp_path / "t.txt").write_text("the cat sat on the mat; the dog ran to the house.\n" * 200)
    TextTokenizer.train([tmp_path / "t.txt"], vocab_size=300).save_pretrained(tmp_path / "text")
    for seed in (0, 1):  # one recipe, two trainings: same config, different weights
        torch.manual_seed(seed)
        ImageTokenizer(image_preset("debug")).save_pretrained(tmp_path / f"img{seed}")
    AudioTokenizer(AudioTokenizerConfig.tiny()).save_pretrained(tmp_path / "audio")
    return tmp_path


def test_build_writes_the_vocabulary_of_the_tokenizers(tokenizers, capsys):
    d = tokenizers
    assert main(["vocab", "build", "--tokenizer", str(d / "text"), str(d / "img0"), str(d / "audio"),
                 "--out", str(d / "vocab.json")]) == 0
    v = UnifiedVocab.load(d / "vocab.json")
    assert v.text_size == 300 and set(v.codebooks) == {"image", "audio"}
    assert v.codebooks["audio"].levels == 4 and v.code_range("audio", 3)[1] == v.size
    assert main(["vocab", "show", str(d / "vocab.json")]) == 0
    assert "audio/3" in capsys.readouterr().out


def test_identity_includes_the_weights(tokenizers):
    from unitok.tokenizers.base import load_tokenizer

    a, b = load_tokenizer(tokenizers / "img0"), load_tokenizer(tokenizers / "img1")
    assert a.identity()["config_sha256"] == b.identity()["config_sha256"]
    assert a.identity()["weights_sha256"] != b.identity()["weights_sha256"]
    va, vb = UnifiedVocab.from_tokenizers([a]), UnifiedVocab.from_tokenizers([b])
    with pytest.raises(VocabMismatchError, match="weights_sha256"):
        va.check_same(vb)
    assert load_tokenizer(tokenizers / "img0").identity() == a.identity()  # stable across loads


def test_two_tokenizers_of_one_modality_are_a_one_line_error(tokenizers, capsys):
    d = tokenizers
    assert main(["vocab", "build", "--tokenizer", str(d / "img0"), str(d / "img1"), "--out", str(d / "v.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unitok: error: two image tokenizers") and err.count("\n") == 1
