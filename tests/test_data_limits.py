"""Bounded inputs of pretokenize and of the media policy (issue 20): tar members that are links or
too large and a tar over its total cap are refused with a named reason, a tar is read as a stream;
a 10-hour WAV and a 10^5-frame video are refused from their headers, before allocation (peak
memory watched in a subprocess); JSONL media paths stay inside the manifest's folder unless
--allow-outside-paths. And the run as a whole: a run that keeps nothing exits 2 with its reasons,
every reason names its media file, --resume on a complete output changes nothing."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.data.policy import MediaPolicy, load_audio, video_clips
from unitok.data.pretokenize import PretokenizeConfig, iter_documents, pretokenize
from unitok.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CFG = PretokenizeConfig(image_size=32)
MB = 2**20


def _png(seed: int = 0, side: int = 40) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), np.uint8)).save(b, format="PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """An image and an audio tokenizer directory (codebooks initialised, as training would)."""
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset

    d = tmp_path_factory.mktemp("toks")
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(torch.rand(4, 3, 32, 32) * 2 - 1)
    img.save_pretrained(d / "image")
    AudioTokenizer(AudioTokenizerConfig.tiny()).save_pretrained(d / "audio")
    return [d / "image", d / "audio"]


def _reasons(out: Path) -> dict:
    """stats.json's skips: {source's last path part: reason}."""
    return {s["source"].split("/")[-1]: s["reason"] for s in json.loads((out / "stats.json").read_text())["skipped"]}


def _peak_mb(setup: str, run: str) -> tuple[float, str]:
    """Run `run` in a fresh interpreter after `setup`: (how far the peak resident memory rose above
    its level after setup, in MB; what `run` printed)."""
    code = (f"import resource\n{setup}\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n{run}\n"
            "print('peak', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n")  # KB on Linux
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    *printed, peak = r.stdout.strip().splitlines()
    return float(peak.split()[1]), "\n".join(printed)


# ------------------------------------------------------------------ tars
def _add(tf, name, raw=b"", **kw):
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(raw) if raw else None)


def test_tar_links_and_oversize_members_are_refused_by_name(toks, tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.png", _png(0))
        _add(tf, "sym.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tf, "hard.png", type=tarfile.LNKTYPE, linkname="a.png")
        _add(tf, "big.png", _png(1, 64))  # about 12 KB > 8 KB
        _add(tf, "b.png", _png(2))
    cfg = PretokenizeConfig(image_size=32, max_member_mb=8 / 1024)
    st = pretokenize([tmp_path / "s.tar"], toks[:1], tmp_path / "o", cfg, progress=False)
    r = _reasons(tmp_path / "o")
    assert r["s.tar:sym.png"] == "symbolic link (refused)" and r["s.tar:hard.png"] == "hard link (refused)"
    assert r["s.tar:big.png"].startswith("member of 0 MB > max_member_mb 0.0078125")
    assert st["documents"] == 2  # a and b
    assert st["skip_reasons"] == {"hard link": 1, "member of N MB > max_member_mb N": 1, "symbolic link": 1}


def test_tar_is_read_as_a_stream_one_sample_at_a_time(tmp_path, monkeypatch):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for i in range(3):
            _add(tf, f"s{i}.png", _png(i))
            _add(tf, f"s{i}.txt", f"caption {i}".encode())
            _add(tf, f"s{i}.cls", b"7")  # neither media nor text: never read
        _add(tf, "s0.json", b"{}")  # not next to its sample
    read = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extract(self, m))
    docs = iter_documents([str(tmp_path / "s.tar")], CFG, skipped := [])
    src, segs = next(docs)
    assert src.endswith("s.tar:s0") and read == ["s0.png", "s0.txt"]  # the first sample before the rest is read
    assert len(list(docs)) == 2 and read[-2:] == ["s2.png", "s2.txt"] and len(read) == 6
    assert [(x["source"].split("/")[-1], x["reason"]) for x in skipped] == [
        ("s.tar:s0.json", "not next to the earlier members of its sample (refused)")]


def _sparse_tar(path: Path, members: int, member_mb: int) -> None:
    """A tar of `members` all-zero .png members of `member_mb` MB each, written as holes (no disk, no time)."""
    with open(path, "wb") as f:
        for i in range(members):
            info = tarfile.TarInfo(f"m{i}.png")
            info.size = member_mb * MB
            f.write(info.tobuf(format=tarfile.GNU_FORMAT))
            f.seek(info.size, os.SEEK_CUR)  # size is a multiple of the 512-byte block
        f.truncate(f.tell() + 2 * 512 * 10)  # the end-of-archive blocks (zeros)


def test_tar_over_the_total_cap_is_refused_before_reading(toks, tmp_path):
    _sparse_tar(tmp_path / "big.tar", members=12, member_mb=100)  # 1.2 GB of holes; members < max_member_mb
    with pytest.raises(DataError, match="no document kept; skipped: tar of N MB > max_tar_mb N \\(1\\)"):
        pretokenize([tmp_path / "big.tar"], toks[:1], tmp_path / "o", PretokenizeConfig(max_tar_mb=1024),
                    progress=False)
    assert _reasons(tmp_path / "o")["big.tar"] == "tar of 1,200 MB > max_tar_mb 1024 (refused before reading)"
    peak, printed = _peak_mb(
        "import tarfile\nfrom unitok.data.pretokenize import PretokenizeConfig, iter_documents",
        f"skipped = []\nprint(len(list(iter_documents([{str(tmp_path / 'big.tar')!r}], "
        "PretokenizeConfig(max_tar_mb=1024), skipped))), skipped[0]['reason'])")
    assert printed.startswith("0 tar of 1,200 MB") and peak < 200, (peak, printed)


def test_a_compressed_tar_stops_at_the_total_cap(tmp_path):
    """A compressed tar (tarfile reads gzip inside a .tar transparently) is small on disk: the cap
    counts the bytes read from it; the samples before it are kept."""
    with tarfile.open(tmp_path / "z.tar", "w:gz") as tf:
        for i in range(4):
            _add(tf, f"s{i}.png", bytes(MB // 2))  # zeros: 0.5 MB each, a few KB compressed
    assert (tmp_path / "z.tar").stat().st_size < MB // 10
    docs = list(iter_documents([str(tmp_path / "z.tar")], PretokenizeConfig(max_tar_mb=1.2), skipped := []))
    # s2 ends at 1.5 MB; s1 might have continued in it, so it goes with the rest
    assert [d[0].split(":")[-1] for d in docs] == ["s0"]
    assert [(x["source"].split(":")[-1], x["reason"]) for x in skipped] == [
        ("s2.png", "tar over max_tar_mb 1.2 (refused from sample s1 on)")]


# ------------------------------------------------------------------ long recordings, long videos
def _sparse_wav(path: Path, seconds: float, sr: int = 48000) -> None:
    """A 16-bit mono WAV of `seconds` of silence: a real header and a file of the full length made of
    holes, so that a reader believes it (a file shorter than its header is cut by libsndfile)."""
    import soundfile as sf

    sf.write(path, np.zeros(sr // 10, np.float32), sr, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    data = raw.index(b"data")
    n = int(seconds * sr) * 2
    raw[4:8] = (data + 8 + n - 8).to_bytes(4, "little")
    raw[data + 4:data + 8] = n.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(raw[:data + 8])
        f.truncate(data + 8 + n)


def test_ten_hour_recording_is_refused_before_decoding(toks, tmp_path):
    import soundfile as sf

    (tmp_path / "rec").mkdir()
    wav = tmp_path / "rec" / "long.wav"
    _sparse_wav(wav, 10 * 3600)
    # what a reader without the limit would decode: 6.9 GB of float32; at the limit (1 h) still 0.7 GB
    assert sf.info(wav).duration == 36000
    with pytest.raises(DataError, match="no document kept; skipped: recording of N s > max_recording_seconds N"):
        pretokenize([tmp_path / "rec"], toks, tmp_path / "o", CFG, progress=False)
    assert _reasons(tmp_path / "o")["long.wav"] == (
        f"{wav}: recording of 36,000 s > max_recording_seconds 3600 (refused before decoding)")
    peak, printed = _peak_mb(
        "from types import SimpleNamespace as NS\nimport soundfile, unitok.data.audio\n"
        "from unitok.data.policy import load_audio\nfrom unitok.errors import DataError",
        f"try:\n    load_audio({str(wav)!r}, NS(config=NS(sample_rate=16000, channels=1)))\n"
        "except DataError as e:\n    print(e)")
    assert printed.endswith("(refused before decoding)") and peak < 200, (peak, printed)


def test_a_recording_without_a_stated_length_stops_decoding_at_the_cap():
    """Matroska written to a pipe states no duration; soundfile cannot read AAC, so PyAV decodes it."""
    import av

    from unitok.data.audio import decode_audio

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.buf += bytes(b)
            return len(b)

    pipe, sr = Pipe(), 16000
    with av.open(pipe, "w", format="matroska") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "mono"
        x = (0.1 * np.sin(np.arange(3 * sr) / 10)).astype(np.float32)  # 3 s
        for i in range(0, len(x), 1024):
            fr = av.AudioFrame.from_ndarray(x[None, i:i + 1024], format="flt", layout="mono")
            fr.sample_rate, fr.pts = sr, i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    raw = bytes(pipe.buf)
    with av.open(io.BytesIO(raw)) as c:
        assert c.streams.audio[0].duration is None and c.duration is None
    assert decode_audio(io.BytesIO(raw), "x.mka", 5.0)[0].shape[-1] >= 3 * sr
    with pytest.raises(DataError, match=r"^x.mka: recording of more than 1 s > max_recording_seconds \(stopped"):
        decode_audio(io.BytesIO(raw), "x.mka", 1.0)


def _gop(side: int, fmt: str) -> bytes:
    """50 frames at 8 fps, an I frame then P frames, encoded as H.264 in `fmt`."""
    import av

    b = io.BytesIO()
    with av.open(b, "w", format=fmt) as c:
        s = c.add_stream("libx264", rate=8)
        s.width = s.height = side
        s.pix_fmt, s.options = "yuv420p", {"g": "50", "preset": "ultrafast"}
        for i in range(50):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((side, side, 3), 4 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return b.getvalue()


def _mp4(path: Path, side: int, copies: int) -> None:
    """An MP4 of `copies` x the packets of one GOP, shifted in time: 10^5 frames in under a second."""
    import av

    with av.open(io.BytesIO(_gop(side, "mp4"))) as c, av.open(str(path), "w") as out:
        st = c.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in c.demux(st) if p.size]
        o = out.add_stream_from_template(st)
        step = 50 * int(1 / (8 * st.time_base))  # one GOP in time_base units
        for g in range(copies):
            for raw, pts, dts, key in packets:
                p = av.Packet(raw)
                p.pts, p.dts, p.is_keyframe = pts + g * step, dts + g * step, key
                p.time_base, p.stream = st.time_base, o
                out.mux(p)


def test_video_of_1e5_frames_is_refused_before_decoding(tmp_path):
    import av

    clip = tmp_path / "long.mp4"
    _mp4(clip, side=256, copies=2000)  # decoded whole: 10^5 x 196,608 B = 20 GB; at the frame cap 805 MB
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames == 100_000  # a real video of 10^5 frames, not only a header
    with pytest.raises(DataError, match=r"video of 100,000 frames at 8 fps > max_video_frames 4,096 \(refused before"):
        video_clips(clip, MediaPolicy())
    peak, printed = _peak_mb(
        "import av, unitok.data.media\nfrom unitok.data.policy import MediaPolicy, video_clips\n"
        "from unitok.errors import DataError",
        f"try:\n    video_clips({str(clip)!r}, MediaPolicy())\nexcept DataError as e:\n    print(e)")
    assert printed.endswith("(refused before decoding)") and peak < 200, (peak, printed)
    # frames x pixels: 50 frames of 256 x 256 are 3.3 M pixels
    _mp4(tmp_path / "short.mp4", side=256, copies=1)
    with pytest.raises(DataError, match=r"50 frames of 256x256 px > max_video_pixels 3,000,000 \(refused before"):
        video_clips(tmp_path / "short.mp4", MediaPolicy(max_video_pixels=3_000_000))
    assert len(video_clips(tmp_path / "short.mp4", MediaPolicy(max_video_pixels=3_300_000))) == 5  # 45 of 50 frames


def test_a_video_without_a_stated_length_stops_decoding_at_the_cap(tmp_path):
    import av

    from unitok.data.media import read_video

    (tmp_path / "raw.h264").write_bytes(_gop(16, "h264") * 4)  # an elementary stream: no length, no frame count
    with av.open(str(tmp_path / "raw.h264")) as c:
        assert c.streams.video[0].frames == 0 and c.duration is None
    assert len(read_video(tmp_path / "raw.h264")) == 200
    with pytest.raises(DataError, match=r"more than 150 frames at 8 fps > max_video_frames \(stopped decoding"):
        video_clips(tmp_path / "raw.h264", MediaPolicy(max_video_frames=150))
    with pytest.raises(DataError, match=r"more than 25,600 px in all > max_video_pixels \(stopped decoding"):
        video_clips(tmp_path / "raw.h264", MediaPolicy(max_video_pixels=100 * 256))


# ------------------------------------------------------------------ JSONL paths
def test_jsonl_media_paths_stay_in_the_manifest_folder(toks, tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    for f in ("m/in.png", "out.png"):
        (tmp_path / f).write_bytes(_png(len(f)))
    (tmp_path / "m" / "link.png").symlink_to(tmp_path / "out.png")
    paths = ["in.png", str(tmp_path / "out.png"), "../out.png", "link.png", "sub/../in.png"]
    (tmp_path / "m" / "docs.jsonl").write_text("".join(json.dumps({"segments": [{"image": p}]}) + "\n" for p in paths))
    st = pretokenize([tmp_path / "m" / "docs.jsonl"], toks[:1], tmp_path / "o", CFG, progress=False)
    assert st["documents"] == 2  # in.png and sub/../in.png (`..` that stays inside)
    r = _reasons(tmp_path / "o")
    for line, p in ((2, str(tmp_path / "out.png")), (3, "../out.png"), (4, "link.png")):
        assert r[f"docs.jsonl:{line}"] == (f"media path outside the manifest's folder ({p}; refused unless "
                                           "--allow-outside-paths)")
    from unitok.cli import main

    assert main(["pretokenize", str(tmp_path / "m" / "docs.jsonl"), "--tokenizer", str(toks[0]), "--out",
                 str(tmp_path / "o2"), "--allow-outside-paths", "--set", "image_size=32"]) == 0
    st = json.loads((tmp_path / "o2" / "stats.json").read_text())
    assert st["documents"] == 5 and st["skipped"] == [] and st["policy"]["allow_outside_paths"] is True


# ------------------------------------------------------------------ the run as a whole
def test_a_run_that_keeps_nothing_exits_2_naming_each_reason_and_file(toks, tmp_path, capsys):
    from unitok.cli import main

    good = _png(0, 64)
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "cut.png").write_bytes(good[:len(good) // 2])  # truncated inside its pixel data
    (tmp_path / "media" / "tiny.png").write_bytes(_png(1, 8))
    (tmp_path / "docs.jsonl").write_text(
        json.dumps({"segments": [{"image": "media/cut.png"}]}) + "\n" + json.dumps({"segments": [{"image": "no.png"}]})
        + "\n" + json.dumps({"segments": [{"image": "media/tiny.png"}]}) + "\n{oops\n")
    argv = ["pretokenize", str(tmp_path / "docs.jsonl"), "--tokenizer", str(toks[0]), "--out", str(tmp_path / "o"),
            "--set", "image_size=32"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("unitok: error: ")
    assert ("no document kept; skipped: unreadable image (2), malformed line (1), too small (1) (each skip with "
            "its source in") in err
    r = _reasons(tmp_path / "o")
    assert r["docs.jsonl:1"].startswith(f"{tmp_path / 'media' / 'cut.png'}: unreadable image (image file is truncated")
    assert r["docs.jsonl:2"].startswith(f"{tmp_path / 'no.png'}: unreadable image (")
    assert r["docs.jsonl:3"].startswith(f"{tmp_path / 'media' / 'tiny.png'}: too small (8x8 px")
    assert main(argv + ["--resume"]) == 2  # still nothing kept, said again


def test_resume_on_a_complete_output_changes_nothing(toks, tmp_path, capsys):
    from unitok.cli import main

    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.png").write_bytes(_png(0))
    argv = ["pretokenize", str(tmp_path / "media"), "--tokenizer", str(toks[0]), "--out", str(tmp_path / "o"),
            "--set", "image_size=32"]
    assert main(argv) == 0

    def snapshot():
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((tmp_path / "o").rglob("*")) if p.is_file()}

    before = snapshot()
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    assert "is already complete (stats.json); nothing to do" in capsys.readouterr().err
    assert snapshot() == before
    assert main(argv[:-1] + ["image_size=16", "--resume"]) == 2  # another policy: refused, nothing changed
    assert "is complete, from other inputs, tokenizers or policy" in capsys.readouterr().err
    assert snapshot() == before
