"""The audio bench per source sampling rate (8 kHz telephone speech upsampled as the policy does) and per
language, naming the held-out language seen least in training; tiny generated audio, a tiny tokenizer."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from unitok.bench.audio import by_group, least_seen
from unitok.cli import main
from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig

HEAD = "file\ttext\tlanguage\tseconds\tpackage\tlicence\tpath_in_package\n"
HELD = [("ast_1.flac", "en", 8000), ("ast_2.flac", "en", 8000), ("tux_fr.flac", "fr", 16000),
        ("tux_ro.flac", "ro", 16000)]


def test_by_group_means_and_least_seen():
    ours = {"a": {"si_snr": 1.0, "mel_distance": 1.0, "mel_distance_4k": 2.0, "stoi": 0.5, "seconds": 1.0},
            "b": {"si_snr": 3.0, "mel_distance": 3.0, "mel_distance_4k": 4.0, "stoi": 0.7, "seconds": 2.0},
            "c": {"si_snr": 5.0, "mel_distance": 5.0, "mel_distance_4k": 6.0, "stoi": 0.9, "seconds": 0.5}}
    codec2 = {k: v for k, v in ours.items() if k != "c"}  # a file the codec did not score: its group leaves it out
    g = by_group({"a": "en", "b": "en", "c": "ro", "unlabelled": "x"}, {"ours": ours, "codec2": codec2, "opus": {}})
    assert set(g) == {"en", "ro"} and g["en"]["files"] == 2 and g["en"]["seconds"] == 3.0
    assert g["en"]["ours"]["mel_distance_4k"] == pytest.approx(3.0) and g["en"]["codec2"]["stoi"] == pytest.approx(0.6)
    assert "codec2" not in g["ro"] and "opus" not in g["en"]
    ls = least_seen(g, {"en": 100.0, "ro": 2.5})
    assert ls["language"] == "ro" and ls["train_seconds"] == 2.5 and ls["ours"] == g["ro"]["ours"]
    assert least_seen(g, {"en": 1.0, "ro": 2.5})["language"] == "en"
    assert least_seen(g, {"en": 1.0})["language"] == "ro"  # never seen: least
    assert least_seen({}, {}) is None


def test_bench_scores_per_rate_and_language(tmp_path):
    held, train = tmp_path / "held", tmp_path / "train"
    held.mkdir()
    train.mkdir()
    rows = []
    for i, (name, lang, sr) in enumerate(HELD):
        t = np.arange(int(0.5 * sr)) / sr
        sf.write(held / name, 0.3 * np.sin(2 * np.pi * (180 + 50 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2, sr)
        rows.append(f"{name}\tx\t{lang}\t0.5\tpkg\tCC\tp/{name}\n")
    (held / "SOURCES.tsv").write_text(HEAD + "".join(rows))
    (train / "SOURCES.tsv").write_text(HEAD + "".join(f"t{i}.flac\tx\t{lang}\t{s}\tpkg\tCC\tp/t{i}\n" for i, (lang, s) in
                                                      enumerate((("en", 20), ("fr", 4), ("ro", 1.5), ("ro", 1)))))
    torch.manual_seed(0)
    AudioTokenizer(AudioTokenizerConfig.tiny()).eval().save_pretrained(tmp_path / "tok")
    js = tmp_path / "r" / "b.json"
    assert main(["tokenizer", "bench", str(tmp_path / "tok"), "--data", str(held), "--json", str(js),
                 "--train-data", str(train)]) == 0
    r = json.loads(js.read_text())
    per_file = r["ours"]["per_file"]
    assert {f: v["source_rate"] for f, v in per_file.items()} == {n: sr for n, _, sr in HELD}
    assert set(r["by_rate"]) == {"8000 Hz", "16000 Hz"}
    for rate, files in (("8000 Hz", ["ast_1.flac", "ast_2.flac"]), ("16000 Hz", ["tux_fr.flac", "tux_ro.flac"])):
        g = r["by_rate"][rate]
        assert g["files"] == 2 and g["seconds"] == pytest.approx(1.0, abs=0.01)
        assert g["ours"]["mel_distance_4k"] == pytest.approx(np.mean([per_file[f]["mel_distance_4k"] for f in files]))
        assert g["codec2"]["mel_distance_4k"] > 0
    assert set(r["by_language"]) == {"en", "fr", "ro"} and r["by_language"]["en"]["files"] == 2
    ls = r["least_seen_language"]
    assert ls["language"] == "ro" and ls["train_seconds"] == 2.5 and ls["files"] == 1
    assert ls["ours"]["mel_distance_4k"] == pytest.approx(per_file["tux_ro.flac"]["mel_distance_4k"])
    md = (tmp_path / "r" / "bench.md").read_text()
    assert "| 8000 Hz | 2 |" in md and "| ro | 1 |" in md and "Language seen least in training: ro (2.5 s)" in md
