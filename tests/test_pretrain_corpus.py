"""scripts/pretrain_shared.py on a tiny folder in the corpus layout (photos/ speech/ video/ text/ with
SOURCES.tsv, like ../shared/corpus): the preparation only, tiny tokenizers."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from unitok.apps import pretrain_shared as ps
from unitok.data.packed import split_shards
from unitok.data.shards import document_kinds, document_sources, read_shards
from unitok.vocab import Modality

SPEECH = [  # file, text, language, rate, path_in_package: an 8 kHz voice in two folders, 16 kHz in two languages
    ("ast_digits_1.flac", "one", "en", 8000, "ast/sounds/en_US_f_Allison/digits/1.wav"),
    ("ast_letters_a.flac", "a", "en", 8000, "ast/sounds/en_US_f_Allison/letters/a.wav"),
    ("tux_fr_cat.flac", "un chat", "fr", 16000, "tux/stamps/cats/cat_desc_fr.ogg"),
    ("tux_ro_cat.flac", "o pisica", "ro", 16000, "tux/stamps/cats/cat_desc_ro.ogg"),
]
VIDEOS = {"walk_00.mp4": "walk.avi", "walk_01.mp4": "walk.avi", "tree_00.mp4": "tree.avi"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from skimage import data

    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.video import VideoTokenizer, video_preset

    d = tmp_path_factory.mktemp("corpus")
    for sub in ("photos", "speech", "video", "text"):
        (d / sub).mkdir()
    (d / "text" / "emma.txt").write_text("\n\n".join(f"Emma said thing number {i}." for i in range(300)))
    (d / "text" / "devil.txt").write_text("\n\n".join(f"WORD {i}, n. A thing defined." for i in range(300)))
    rows = []
    for name, img in (("cat", data.chelsea()), ("coffee", data.coffee()), ("rocket", data.rocket())):
        Image.fromarray(img[:64, :64]).save(d / "photos" / f"pkg_{name}.jpg")
        rows.append(f"pkg_{name}.jpg\t64x64\tdeb:pkg\tCC0\tpkg/{name}.jpg\n")
    (d / "photos" / "SOURCES.tsv").write_text("file\toriginal_size\tpackage\tlicence\tpath_in_package\n" + "".join(rows))
    rows = []
    for i, (name, text, lang, sr, path) in enumerate(SPEECH):
        t = np.arange(int(0.4 * sr)) / sr
        sf.write(d / "speech" / name, 0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t), sr)
        rows.append(f"{name}\t{text}\t{lang}\t0.4\tdeb:{name[:3]}\tCC\t{path}\n")
    # no transcripts.tsv: the transcripts come from SOURCES.tsv
    (d / "speech" / "SOURCES.tsv").write_text("file\ttext\tlanguage\tseconds\tpackage\tlicence\tpath_in_package\n" +
                                              "".join(rows))
    for i, name in enumerate(VIDEOS):  # 10 frames at 8 fps: 2 clips of 5
        with av.open(str(d / "video" / name), "w") as c:
            s = c.add_stream("libx264", rate=8)
            s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
            for k in range(10):
                for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * k + 60 * i, np.uint8),
                                                            format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    (d / "video" / "SOURCES.tsv").write_text("file\tstart_s\tpackage\tlicence\toriginal_file\n" +
                                             "".join(f"{n}\t0.0\tpkg\tMIT\t{o}\n" for n, o in VIDEOS.items()))
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(torch.rand(4, 3, 32, 32) * 2 - 1)  # k-means-initialise the codebooks, as training would
    img.save_pretrained(d.parent / f"{d.name}_tok_image")
    vid = VideoTokenizer(video_preset("debug")).eval()
    vid.encode(torch.rand(2, 3, 5, 16, 16) * 2 - 1)
    vid.save_pretrained(d.parent / f"{d.name}_tok_video")
    AudioTokenizer(AudioTokenizerConfig.tiny()).save_pretrained(d.parent / f"{d.name}_tok_audio")
    return d


def test_prepares_the_corpus_layout(corpus, tmp_path):
    toks = {m: corpus.parent / f"{corpus.name}_tok_{m}" for m in ("image", "audio", "video")}
    out = tmp_path / "run"
    argv = ["--data", str(corpus), "--out", str(out), "--text-vocab", "300", "--workers", "0",
            *(x for m, t in toks.items() for x in (f"--{m}-tokenizer", str(t))),
            "--set", "image_size=32", "--set", "audio_max_seconds=0.5", "--set", "video_size=16",
            "--set", "video_fps=8", "--set", "video_frames=5", "--prepare-only"]
    assert ps.main(argv) == 0
    stats = json.loads((out / "shards" / "stats.json").read_text())
    assert [Path(i).name for i in stats["inputs"]] == ["text.jsonl", "photos", "speech", "video"]
    assert not stats["skipped"], stats["skipped"]
    sh = read_shards(out / "shards")
    kinds, sources = document_kinds(sh), document_sources(sh)
    count = {Modality(k).name.lower(): int((kinds == k).sum()) for k in np.unique(kinds)}
    assert count["image"] == 3 and count["audio"] == 4 and count["video"] == 6 and count["text"] > 2, count
    text_tokens = {}  # per media kind: text tokens in each document beyond its first (<bos>)
    for i, k in enumerate(kinds):
        _, mod = sh.document(i)
        text_tokens.setdefault(Modality(k).name.lower(), []).append(int((np.asarray(mod[1:]) == Modality.TEXT).sum()))
    assert max(text_tokens["image"]) <= 1  # photos: unconditional (at most an <eos>)
    assert min(text_tokens["audio"]) > 1  # each clip with its transcript from SOURCES.tsv
    # sources recorded: each media document's group is the split's source (a video's recording)
    groups = {Path(s["source"]).name: s.get("group") for s in sources if "group" in s}
    assert groups["walk_00.mp4"] == groups["walk_01.mp4"] == "video|walk.avi" != groups["tree_00.mp4"]
    assert groups["pkg_cat.jpg"] == "photos|pkg_cat.jpg"
    assert groups["tux_fr_cat.flac"] != groups["tux_ro_cat.flac"]  # the same stamp folder, another language
    assert len(groups) == 3 + 4 + 3 and all(k == Modality.TEXT for k, s in zip(kinds, sources) if "group" not in s)
    for seed in range(6):  # the trainer's split keeps every clip of a recording on one side
        train, held, _ = split_shards(sh, 0.4, seed)
        held_groups = {sources[i].get("group") for i in held}
        assert not held_groups & {sources[i].get("group") for i in train} - {None}
    # a rerun finds everything in place and keeps the groups
    assert ps.main(argv) == 0
    assert document_sources(read_shards(out / "shards")) == sources


def test_speech_transcripts_from_sources_or_the_folders_own(tmp_path):
    src, dst = tmp_path / "speech", tmp_path / "staged"
    src.mkdir()
    (src / "a.flac").write_bytes(b"x")
    (src / "transcripts.tsv").write_text("a.flac\tfrom the folder\n")
    (src / "SOURCES.tsv").write_text("file\tpackage\na.flac\tpkg\n")  # no text column: the folder's own
    ps._stage_speech(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["a.flac", "transcripts.tsv"]
    assert (dst / "transcripts.tsv").read_text() == "a.flac\tfrom the folder\n"
    (src / "SOURCES.tsv").write_text("file\ttext\tpackage\na.flac\tfrom SOURCES\tpkg\n")
    ps._stage_speech(src, dst)  # a rerun with a text column: written, not through the earlier link
    assert (dst / "transcripts.tsv").read_text() == "a.flac\tfrom SOURCES\n" and not (dst / "transcripts.tsv").is_symlink()
    assert (src / "transcripts.tsv").read_text() == "a.flac\tfrom the folder\n"
