"""scripts/pretrain_shared.py on a tiny folder laid out like ../shared/data but with other files: text
without blank lines in two files, captioned images, an audio clip beside the WAV decoded from it, no
video folder. Tiny tokenizers; a few training steps."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from unitok.apps import pretrain_shared as ps

ROOT = Path(__file__).resolve().parents[1]

TINY_RUN = ["run.max_steps=3", "run.max_minutes=1", "eval_every=2", "eval_batches=1", "seq_len=64",
            "model.max_seq_len=64", "batch_size=2", "model.dim=32", "model.n_layer=1", "model.n_head=2",
            "model.n_kv_head=1"]


def test_text_documents_keep_speeches_and_cut_text_without_blank_lines():
    speeches = "\n\n".join(f"SPEAKER {i}:\n" + "word " * 50 for i in range(40))  # ~260 chars each
    docs = ps.text_documents(speeches, 1000)
    assert all(len(d) <= 1000 for d in docs) and sum(d.count("SPEAKER") for d in docs) == 40
    assert all(d.startswith("SPEAKER") for d in docs)  # whole speeches
    long_speech = "A:\n" + "line of verse\n" * 200  # 2,803 chars: under 4 x 1000, stays one document
    assert ps.text_documents(long_speech, 1000) == [long_speech.strip()]
    flat = "\n".join(f"sentence number {i} of a text without paragraphs." for i in range(2000))
    docs = ps.text_documents(flat, 1000)
    assert all(len(d) <= 1000 for d in docs) and len(docs) <= len(flat) // 900
    assert "\n".join(docs) == flat  # cut at line ends, nothing lost or added
    assert [len(d) for d in ps.text_documents("x" * 9000 + " " + "word " * 100, 1000)][:9] == [1000] * 9


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from skimage import data

    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset

    d = tmp_path_factory.mktemp("shared")
    (d / "text").mkdir()
    (d / "text" / "a.txt").write_text("\n".join(f"the cat sat on mat number {i}." for i in range(600)))
    (d / "text" / "b.txt").write_text("\n".join(f"a dog ran to tree number {i}." for i in range(600)))
    (d / "images").mkdir()
    for name, img in (("cat", data.chelsea()), ("coffee", data.coffee()), ("rocket", data.rocket())):
        Image.fromarray(img[:96, :96]).save(d / "images" / f"{name}.png")
        (d / "images" / f"{name}.txt").write_text(f"a photo of a {name}")
    (d / "audio").mkdir()
    t = np.arange(8000) / 16000
    for i, f0 in enumerate((220, 330, 440)):
        sf.write(d / "audio" / f"tone{i}.hq.ogg", 0.3 * np.sin(2 * np.pi * f0 * t), 16000, format="OGG")
    sf.write(d / "audio" / "tone0.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)  # decoded copy: left out
    (d / "audio" / "transcripts.tsv").write_text("tone1.hq.ogg\ta low tone\n")
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(torch.rand(4, 3, 32, 32) * 2 - 1)  # k-means-initialise the codebook, as training would
    img.save_pretrained(d / "tok_image")
    AudioTokenizer(AudioTokenizerConfig.tiny()).save_pretrained(d / "tok_audio")
    return d


def _argv(d, out, *extra):
    return ["--data", str(d), "--out", str(out), "--image-tokenizer", str(d / "tok_image"), "--audio-tokenizer",
            str(d / "tok_audio"), "--text-vocab", "300", "--workers", "0", "--set", "image_size=32",
            "--set", "audio_max_seconds=0.5", *extra]


def test_prepares_and_trains_on_a_folder_of_other_data(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert ps.main(_argv(folder, out, "--prepare-only")) == 0
    assert "training without that modality" in capsys.readouterr().out  # no video folder
    assert sorted(p.name for p in (out / "inputs" / "audio").iterdir()) == [
        "tone0.hq.ogg", "tone1.hq.ogg", "tone2.hq.ogg", "transcripts.tsv"]
    stats = json.loads((out / "shards" / "stats.json").read_text())
    # text, then images, audio, video: the documented runs' document order (it decides the held-out split)
    assert [Path(i).name for i in stats["inputs"]] == ["text.jsonl", "images", "audio"]
    assert {m for m, n in stats["tokens_per_modality"].items() if n} == {"text", "image", "audio"}, stats
    assert stats["policy"]["image_size"] == 32 and stats["policy"]["audio_max_seconds"] == 0.5
    assert not stats["skipped"], stats["skipped"]
    text_docs = [json.loads(x)["segments"][0]["text"] for x in (out / "inputs" / "text.jsonl").read_text().splitlines()]
    assert len(text_docs) > 10 and max(map(len, text_docs)) <= 2000  # two files without blank lines, cut
    assert ps.main(_argv(folder, out, *TINY_RUN)) == 0
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and (out / "run" / "loss.png").is_file()
    assert {"unigram_entropy_text", "unigram_entropy_image", "unigram_entropy_audio"} <= summary.keys()
    # the fair baseline beside each held-out loss (one eval batch: what it covers), what was held out per kind
    evaluated = {m for m in ("text", "image", "audio") if f"eval_loss_{m}" in summary}
    assert evaluated and all(f"baseline_{m}" in summary and f"baseline_level_{m}" in summary for m in evaluated)
    assert {"heldout_text", "heldout_image", "heldout_audio"} <= summary.keys()
    assert summary["heldout_audio"] == "1 of 3 sources held out (1 of 3 documents)"


def test_bad_folders_are_one_line_errors(folder, tmp_path, capsys):
    assert ps.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert ps.main(["--data", str(folder), "--out", str(tmp_path / "o"),
                    "--audio-tokenizer", str(folder / "tok_audio")]) == 2
    assert "images has files: give --image-tokenizer" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ps.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no text/*.txt and no media" in capsys.readouterr().err
    assert ps.main(_argv(folder, tmp_path / "o2", "--set", "image_size")) == 2
    assert "--set takes KEY=VALUE" in capsys.readouterr().err


def test_the_script_is_a_thin_entry_point():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's unitok, as pytest imports it
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_shared.py"), "--help"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0 and "--image-tokenizer" in r.stdout and "4. `unitok train" in r.stdout, r.stderr
