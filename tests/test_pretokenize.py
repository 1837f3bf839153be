"""Pretokenization of a small mixed corpus (JSONL + webdataset tar + folder) with bad inputs of every
kind; interruption and resume; any number of workers; decoding a document back to files."""

import io
import json
import math
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from unitok.data.pretokenize import PretokenizeConfig, pretokenize
from unitok.data.shards import read_shards

CFG = PretokenizeConfig(image_size=32, audio_max_seconds=0.5, seed=3)


def _png(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def _wav(x, sr=16000) -> bytes:
    b = io.BytesIO()
    sf.write(b, x.astype(np.float32), sr, format="WAV")
    return b.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from skimage import data

    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.text import TextTokenizer

    d = tmp_path_factory.mktemp("corpus")
    (d / "t.txt").write_text("a photo of a cat. the sound of a bird. a dog on a mat.\n" * 100)
    TextTokenizer.train([d / "t.txt"], vocab_size=300).save_pretrained(d / "tok_text")
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(torch.rand(4, 3, 32, 32) * 2 - 1)  # k-means-initialise the codebook, as training would
    img.save_pretrained(d / "tok_image")
    AudioTokenizer(AudioTokenizerConfig.tiny()).save_pretrained(d / "tok_audio")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(16000)
    # folder: captions beside the media, one caption not UTF-8, a corrupt image, an empty audio file
    f = d / "folder"
    f.mkdir()
    (f / "cat.png").write_bytes(_png(data.chelsea()[:80, :120]))
    (f / "cat.txt").write_text("a photo of a cat")
    (f / "coffee.png").write_bytes(_png(data.coffee()[:64, :64]))
    (f / "coffee.txt").write_bytes(b"caf\xe9 latin-1")  # not UTF-8: the image is kept without text
    (f / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (f / "empty.wav").write_bytes(b"")
    (f / "bird.wav").write_bytes(_wav(tone))  # 1 s > audio_max_seconds: chunks, transcript dropped
    (f / "transcripts.tsv").write_text("bird.wav\tthe sound of a bird\n")
    # webdataset tar: image + txt, audio + json, a sample with two media files
    with tarfile.open(d / "shard-000.tar", "w") as tf:
        def add(name, raw):
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
        add("s1.png", _png(data.astronaut()[:48, :48]))
        add("s1.txt", b"an astronaut")
        add("s2.wav", _wav(tone[:6000]))
        add("s2.json", json.dumps({"text": "a short tone"}).encode())
        add("s3.png", _png(data.camera()[:40, :40]))
        add("s3.wav", _wav(tone[:4000]))
    # JSONL: an interleaved document, a missing file, a malformed line
    (d / "docs.jsonl").write_text("\n".join([
        json.dumps({"segments": [{"text": "look:"}, {"image": "folder/cat.png"}, {"text": "and listen"},
                                 {"audio": "folder/bird.wav"}]}),
        json.dumps({"segments": [{"text": "missing"}, {"image": "nope.png"}]}),
        "{not json",
    ]) + "\n")
    return d


def _run(c, out, **kw):
    return pretokenize([c / "docs.jsonl", c / "shard-000.tar", c / "folder"],
                       [c / "tok_text", c / "tok_image", c / "tok_audio"], out, CFG, progress=False, **kw)


def _files(out):
    return {f: (out / f).read_bytes() for f in ("tokens.bin", "modality.bin", "offsets.bin")}


def test_counts_skips_and_decoding(corpus, tmp_path, capsys):
    st = _run(corpus, tmp_path / "a")
    reasons = {s["source"].split("/")[-1]: s["reason"] for s in st["skipped"]}
    assert "docs.jsonl:3" in reasons and "malformed" in reasons["docs.jsonl:3"]
    assert "unreadable image" in reasons["docs.jsonl:2"] or "nope.png" in reasons["docs.jsonl:2"]
    assert "2 media files" in reasons["shard-000.tar:s3"]
    assert "broken.png" in reasons and "unreadable image" in reasons["broken.png"]
    assert "empty.wav" in reasons
    assert "coffee.txt" in reasons and "not UTF-8" in reasons["coffee.txt"]
    # documents: jsonl 1, tar 2, folder: cat, coffee (no text), bird (2 chunks, no transcript) = 6 written
    assert st["documents"] == 7 and st["split_documents"] == 1
    assert set(st["tokens_per_modality"]) == {"text", "image", "audio"} and st["dtype"] == "uint16"
    sh = read_shards(tmp_path / "a")
    assert len(sh) == 7 and sh.offsets[-1] == st["tokens"] == len(sh.tokens)
    ids, mods = sh.document(0)  # the interleaved JSONL document round-trips through unpack
    un = sh.vocab.unpack(np.asarray(ids, np.int64))
    kinds = [next(iter(s)) for s in un.segments]
    assert kinds == ["text", "image", "text", "audio", "audio"] and not un.problems  # 1 s audio in 2 chunks
    assert un.segments[1]["image"].shape[-2:] == (8, 8)  # 32 px / f4
    from unitok.data.shards import decode_cli
    from argparse import Namespace

    assert decode_cli(Namespace(shards=str(tmp_path / "a"), doc=0, out=str(tmp_path / "dec"))) == 0
    names = sorted(p.name for p in (tmp_path / "dec").iterdir())
    assert names == ["doc0_00_text.txt", "doc0_01_image.png", "doc0_02_text.txt", "doc0_03_audio.wav",
                     "doc0_04_audio.wav"]
    assert Image.open(tmp_path / "dec" / "doc0_01_image.png").size == (32, 32)
    assert (tmp_path / "dec" / "doc0_00_text.txt").read_text() == "look:"


def test_sources_name_each_documents_input_and_chunk(corpus, tmp_path):
    from unitok.data.shards import document_sources

    _run(corpus, tmp_path / "a")
    src = document_sources(read_shards(tmp_path / "a"))
    names = [(s["source"].split("/")[-1], s.get("chunk")) for s in src]
    # written in input order: the manifest's line 1, the tar's samples, the folder's files (bird: 2 chunks)
    assert names == [("docs.jsonl:1", None), ("shard-000.tar:s1", None), ("shard-000.tar:s2", None),
                     ("bird.wav", 0), ("bird.wav", 1), ("cat.png", None), ("coffee.png", None)]
    assert src[0]["source"] == f"{corpus / 'docs.jsonl'}:1"  # as stats.json names inputs


def test_untrained_tokenizer_is_refused(corpus, tmp_path):
    from unitok.errors import ConfigError
    from unitok.tokenizers.image import ImageTokenizer, image_preset

    ImageTokenizer(image_preset("debug")).save_pretrained(tmp_path / "cold")
    with pytest.raises(ConfigError, match="never trained"):
        pretokenize([corpus / "folder"], [corpus / "tok_text", tmp_path / "cold"], tmp_path / "o", CFG)


def test_interrupt_resume_and_workers_are_byte_identical(corpus, tmp_path):
    _run(corpus, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, tmp_path / "cut", stop_after=3, commit_every=2)
    assert (tmp_path / "cut" / "progress.json").is_file()
    from unitok.errors import DataError

    with pytest.raises(DataError, match="--resume"):
        _run(corpus, tmp_path / "cut")
    with pytest.raises(DataError, match="interrupted"):
        read_shards(tmp_path / "cut")
    _run(corpus, tmp_path / "cut", resume=True)
    _run(corpus, tmp_path / "w2", workers=2)
    ref = _files(tmp_path / "ref")
    assert _files(tmp_path / "cut") == ref and _files(tmp_path / "w2") == ref
    sources = (tmp_path / "ref" / "sources.jsonl").read_bytes()
    assert sources and all((tmp_path / d / "sources.jsonl").read_bytes() == sources for d in ("cut", "w2"))
    strip = lambda p: {k: v for k, v in json.loads((p / "stats.json").read_text()).items() if k != "timings"}
    assert strip(tmp_path / "cut") == strip(tmp_path / "ref") == strip(tmp_path / "w2")


def test_read_video_at_a_frame_rate_from_a_file_object(tmp_path):
    import av

    from unitok.data.media import read_video

    with av.open(str(tmp_path / "c.mp4"), "w") as c:  # 2 s at 10 fps, the frame index in its brightness
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for t in range(20):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * t, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    every = read_video(tmp_path / "c.mp4")
    at4 = read_video(io.BytesIO((tmp_path / "c.mp4").read_bytes()), fps=4, name="clip")
    assert len(every) == 20 and len(at4) == 8  # ticks 0, 0.25, ..., 1.75 s
    assert [int(round(f.mean() / 10)) for f in at4] == [0, 3, 5, 8, 10, 13, 15, 18]
    from unitok.errors import DataError

    with pytest.raises(DataError, match="clip: unreadable video"):
        read_video(io.BytesIO(b"not a video"), fps=4, name="clip")


def test_tsv_extra_columns_are_not_part_of_the_text(tmp_path):
    from unitok.data.pretokenize import PretokenizeConfig, _folder

    (tmp_path / "a.wav").write_bytes(b"RIFF")  # only listed here, never read
    (tmp_path / "transcripts.tsv").write_text("file\ttranscript\tnormalized_transcript\n"
                                              "a.wav\tHello, World.\thello world\n")
    docs = list(_folder(tmp_path, PretokenizeConfig(text_first_ratio=1.0), []))
    assert len(docs) == 1
    texts = [seg[1] for seg in docs[0][1] if seg[0] == "text"]
    assert texts == ["Hello, World."]


def test_a_long_media_file_alone_becomes_a_document_per_chunk(corpus, tmp_path):
    f = tmp_path / "alone"
    f.mkdir()
    (f / "bird.wav").write_bytes((corpus / "folder" / "bird.wav").read_bytes())  # no caption
    st = pretokenize([f], [corpus / "tok_text", corpus / "tok_audio"], tmp_path / "o", CFG, progress=False)
    sh = read_shards(tmp_path / "o")
    n = math.ceil(1.0 / CFG.audio_max_seconds)
    assert n > 1 and st["documents"] == len(sh) == n and st["split_documents"] == 1
    for i in range(n):  # each chunk: <bos>, one audio span, <eos>
        un = sh.vocab.unpack(np.asarray(sh.document(i)[0], np.int64))
        assert [next(iter(s)) for s in un.segments] == ["audio"] and not un.problems


def test_bench_pretokenize_encodes_the_same_codes(corpus, tmp_path):
    from unitok.cli import main

    out = tmp_path / "b.json"
    dirs = [corpus / "tok_text", corpus / "tok_image", corpus / "tok_audio"]
    assert main(["bench", "pretokenize", str(corpus / "folder"), "--tokenizer", *map(str, dirs), "--workers", "0",
                 "--batch-size", "2", "--set", "image_size=32", "audio_max_seconds=0.5", "seed=3",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    pretokenize([corpus / "folder"], dirs, tmp_path / "s", CFG, progress=False)
    sh = read_shards(tmp_path / "s")
    ids = np.asarray(sh.tokens, np.int64)
    rows = {x["modality"]: x for x in r["encode"]["per_modality"]}
    for m in ("image", "audio"):  # the reference encoded exactly the codes that the shards hold
        cb = sh.vocab.codebooks[m]
        lo, hi = sh.vocab.code_range(m, 0)[0], sh.vocab.code_range(m, cb.levels - 1)[1]
        assert rows[m]["tokens"] == int(((ids >= lo) & (ids < hi)).sum()) > 0, m
    assert r["pretokenize"]["tokens"] == len(ids) and r["pretokenize"]["documents"] == len(sh)
    assert r["speed_ratio"] == pytest.approx(r["encode"]["seconds"] / r["pretokenize"]["seconds"])


def test_torchrun_ranks_share_the_work_and_write_the_same_files(corpus, tmp_path):
    """Two gloo ranks: the resume of a single-process interrupted run, and a fresh run, are byte-identical
    to one process; --workers under torchrun is a one-line error."""
    import subprocess
    import sys

    from test_engine import ENV, ROOT, _free_port

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "unitok.cli", "pretokenize", str(corpus / "docs.jsonl"), str(corpus / "shard-000.tar"),
               str(corpus / "folder"), "--tokenizer", *(str(corpus / t) for t in ("tok_text", "tok_image", "tok_audio")),
               "--out", str(out), "--set", "image_size=32", "audio_max_seconds=0.5", "seed=3", *extra]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)

    _run(corpus, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, tmp_path / "cut", stop_after=3, commit_every=2)
    r = torchrun(tmp_path / "cut", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(tmp_path / "t2")
    assert r.returncode == 0 and "2 torchrun processes" in r.stdout, r.stderr[-3000:]
    ref = _files(tmp_path / "ref")
    assert _files(tmp_path / "cut") == ref and _files(tmp_path / "t2") == ref
    sources = (tmp_path / "ref" / "sources.jsonl").read_bytes()
    assert all((tmp_path / d / "sources.jsonl").read_bytes() == sources for d in ("cut", "t2"))
    strip = lambda p: {k: v for k, v in json.loads((p / "stats.json").read_text()).items() if k != "timings"}
    assert strip(tmp_path / "cut") == strip(tmp_path / "ref") == strip(tmp_path / "t2")
    r = torchrun(tmp_path / "w", "--workers", "2")
    assert r.returncode != 0 and "every rank is one worker" in r.stderr
