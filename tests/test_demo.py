"""`unitok demo --tiny`: every stage runs; every generation task's files exist and decode to the sizes
the training policy asks for; the report links only files that exist and every number in its Figures
section is finite; without eSpeak NG the demo says so on one line and runs without speech. Also the
pieces: the eSpeak NG binding, the embedded data and the character error rate."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "text tokenizer", "image tokenizer", "audio tokenizer", "video tokenizer", "vocabulary and shards",
          "unified model", "generation", "report")


def _demo(out: Path, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "unitok.cli", "demo", "--tiny", "--out", str(out)], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from unitok.data.speech import Espeak

    Espeak()  # eSpeak NG is a core dependency (pyproject.toml): if it cannot load, these tests fail, never skip
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, _demo(out)


def _figure_cells(report: str) -> list[str]:
    """Every cell but the first of every table's data rows in the report's Figures section."""
    lines = report.split("\n## Figures\n", 1)[1].split("\n## ", 1)[0].splitlines()
    cells = []
    for i, line in enumerate(lines):
        header = i + 1 < len(lines) and lines[i + 1].startswith("| ---")
        if line.startswith("|") and not line.startswith("| ---") and not header:
            cells += [c.strip() for c in line.strip("|").split("|")[1:]]
    return cells


def test_stages_report_and_figures(demo):
    out, r = demo
    for stage in STAGES:
        assert re.search(rf"^demo: {stage} took \d+\.\d s", r.stdout, re.M), stage
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", report)
    assert "loss.png" in links and "pictures/text-to-image.png" in links and "audio/spectrograms.png" in links
    for link in links:  # every picture, sound and output the report shows exists
        assert (out / link).is_file(), link
    for png in ("loss.png", "pictures/text-to-image.png", "pictures/image-to-image.png",
                "pictures/video-continuation.png", "audio/spectrograms.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and min(im.size) > 100, png
    cells = _figure_cells(report)
    assert len(cells) >= 30
    for c in cells:
        assert math.isfinite(float(c.replace(",", ""))), c
    figures = json.loads((out / "figures.json").read_text())
    for k, v in figures.items():
        assert isinstance(v, (int, float)) and math.isfinite(v), k
    for m in ("text", "image", "video", "audio"):  # every modality trained and evaluated on held-out documents
        assert figures[f"heldout_loss_{m}"] > 0 and figures[f"unigram_entropy_{m}"] > 0, m
        assert re.search(rf"^\| {m} \| [\d,]+ \| \d", report, re.M), m
    assert 0 < figures["audio_log_mel_distance"] and 0 < figures["image_psnr_db"] < 100
    assert (out / "runs" / "unified" / "checkpoint" / "README.md").is_file()


def _decoded(g: dict, modality: str):
    """The media the checkpoint's tokenizer decodes from a sample's span (the prompt's part of it, then
    the generated ids): uint8 pixels (H, W, 3) or (T, H, W, 3), or float samples (N, C)."""
    from unitok.data.media import to_uint8
    from unitok.generation import Pipeline

    pipe = Pipeline.from_pretrained(g["settings"]["checkpoint"])
    segments = pipe.vocab.unpack(g["prompt_ids"] + g["samples"][0]["ids"]).segments
    codes = torch.as_tensor(next(s[modality] for s in reversed(segments) if modality in s))
    with torch.no_grad():
        y = pipe.tokenizers[modality].decode(codes[None])[0]
    return {"image": lambda: to_uint8(y), "video": lambda: to_uint8(y.transpose(0, 1)),
            "audio": lambda: y.t().numpy()}[modality]()


def test_every_task_output_decodes(demo):
    from unitok.data.media import read_video
    from unitok.generation import TASKS
    from unitok.metrics import psnr

    out, _ = demo
    policy = json.loads((out / "shards" / "stats.json").read_text())["policy"]
    for task, spec in TASKS.items():
        g = json.loads((out / "generate" / task / "generation.json").read_text())
        assert g["task"] == task and len(g["samples"]) == 1
        f = out / "generate" / task / g["samples"][0]["file"]
        s = g["settings"]
        # each file holds what its generated codes decode to, and that is not blank or silent
        if spec.output == "image":
            with Image.open(f) as im:
                assert im.format == "PNG" and im.size == (policy["image_size"], policy["image_size"]), task
                pixels = np.asarray(im.convert("RGB"))
            assert np.array_equal(pixels, _decoded(g, "image")) and pixels.std() > 2, task  # PNG: lossless
        elif spec.output == "audio":
            y, sr = sf.read(f, always_2d=True)
            assert sr == s["sample_rate"] and y.shape == (round(s["seconds"] * sr), 1) and np.isfinite(y).all()
            want = _decoded(g, "audio")[:len(y)].clip(-1, 1)
            assert np.abs(y - want).max() < 1e-4 and np.sqrt(np.mean(y ** 2)) > 1e-3  # 16-bit PCM
        elif spec.output == "video":
            v = read_video(f)
            assert v.shape == (s["frames"], policy["video_size"], policy["video_size"], 3), v.shape
            assert s["frames"] == policy["video_frames"] and s["input_frames"] < s["frames"]
            assert psnr(v, _decoded(g, "video")) > 30 and min(frame.std() for frame in v) > 2  # lossy file
        else:
            text = f.read_text(encoding="utf-8")
            assert text.endswith("\n") and g["samples"][0]["text"] == text[:-1]


def test_the_demo_model_exports_to_transformers_with_our_logits(demo, tmp_path):
    """The demo's trained unified model (every modality's codes in one vocabulary) goes out with
    `unitok checkpoint export-hf`, loads in stock transformers and gives our logits on its own shards."""
    transformers = pytest.importorskip("transformers")
    from unitok.checkpoint import load_model
    from unitok.cli import main
    from unitok.data.shards import read_shards

    out, _ = demo
    run, hf_dir = out / "runs" / "unified", tmp_path / "hf"
    assert main(["checkpoint", "export-hf", str(run), "--out", str(hf_dir)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours = load_model(run)
    shards = read_shards(out / "shards")
    docs = [shards.document(i) for i in range(len(shards))]
    media = [t for t, m in docs if (m != 0).sum() >= 48][:2]  # documents with image/audio/video codes
    assert len(media) == 2
    ids = torch.as_tensor(np.stack([np.asarray(t[:96], dtype=np.int64) for t in media]))
    with torch.no_grad():
        diff = (hf(ids).logits - ours.model(ids)).abs().max().item()
    assert diff <= 1e-5, diff


def test_demo_without_espeak_says_so_and_runs_without_speech(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()  # an espeakng_loader whose library cannot be loaded
    (fake / "espeakng_loader.py").write_text("def get_library_path():\n    return '/nonexistent/libespeak-ng.so'\n\n"
                                             "def get_data_path():\n    return '/nonexistent'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    out = tmp_path / "out"
    r = _demo(out, env)
    said = [line for line in r.stdout.splitlines() if "no speech" in line]
    assert said[0].startswith("demo: data: no speech: cannot load the eSpeak NG library") and "continuing" in said[0]
    assert "Traceback" not in r.stderr
    assert "demo: audio tokenizer" not in r.stdout and "demo: video tokenizer took" in r.stdout
    assert not (out / "generate" / "text-to-audio").exists() and not (out / "generate" / "audio-to-text").exists()
    report = (out / "report.md").read_text()
    assert "text-to-audio and audio-to-text were skipped" in report
    for c in _figure_cells(report):
        assert math.isfinite(float(c.replace(",", ""))), c
    assert (out / "generate" / "text-to-image" / "sample0.png").is_file()


def test_espeak_speaks():
    from unitok.data.speech import Espeak, SpeechUnavailable

    tts = Espeak()
    pcm, sr = tts.say("The cat sat on the mat.", voice="en-us+f3", rate=160)
    assert sr == 22050 and pcm.dtype == np.int16 and 0.8 < len(pcm) / sr < 4 and np.abs(pcm).max() > 3000
    slow, _ = tts.say("The cat sat on the mat.", rate=100)
    assert len(slow) > 1.3 * len(pcm)  # the rate is words per minute
    with pytest.raises(SpeechUnavailable, match="no voice"):
        tts.say("hello", voice="no-such-voice")


def test_embedded_data_pieces():
    from unitok.data.embedded import PHOTOS, load_photo, make_clip, pydoc_documents, square_crops

    img = load_photo("camera")  # grey: expanded to RGB
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    clip = make_clip(load_photo("chelsea"), "zoom-in", PHOTOS[0].focus, frames=9, px=32)
    assert clip.shape == (9, 32, 32, 3)
    assert np.abs(clip[0].astype(int) - clip[-1]).mean() > 5  # the view moves
    import random

    crops = square_crops(load_photo("horse"), 3, 48, random.Random(0), flip=True)  # binary picture
    assert len(crops) == 3 and all(c.shape == (48, 48, 3) for c in crops)
    docs = pydoc_documents(10_000)
    assert 5 <= len(docs) <= 12 and all(d.strip() == d and d for d in docs)
    assert len({p.name for p in PHOTOS}) == len(PHOTOS)


def test_gpu_preset_and_device_flags(tmp_path):
    """The gpu preset's plan (its run happens on a GPU), the device reaching every stage, one-line errors."""
    import torch
    from dataclasses import replace

    from unitok.cli import main
    from unitok.apps.demo import plan
    from unitok.model.transformer import UnifiedTransformer

    p = plan(preset="gpu", device="cuda")
    assert p.policy.image_size == 128 and p.policy.video_size == 64 and p.data.crop_px >= 128
    assert {p.image.run.device, p.video.run.device, p.audio.run.device, p.lm.run.device} == {"cuda"}
    assert p.lm.seq_len == 2048 and p.lm.model.max_seq_len >= p.lm.seq_len + 1 + 128
    with torch.device("meta"):
        n = sum(x.numel() for x in UnifiedTransformer(replace(p.lm.model, vocab_size=3849)).parameters())
    assert 20e6 < n < 30e6
    cpu = plan()
    assert cpu.policy.image_size == 64 and cpu.lm.model.dim == 128 and cpu.lm.run.device == "auto"
    assert plan(tiny=True, preset="gpu").policy.image_size == 32  # tiny stays tiny
    if not torch.cuda.is_available():
        assert main(["demo", "--out", str(tmp_path / "d"), "--device", "cuda"]) == 2
    assert main(["demo", "--out", str(tmp_path / "d"), "--tiny", "--preset", "gpu"]) == 2
