"""The generation pipeline on an untrained tiny unified checkpoint written in the real format (text,
image, video and audio tokenizers): every media task gives spans that decode to media of the
requested shape, files are written and read back, seeds reproduce, guidance at scale 1 is plain
sampling, and bad input is one line on stderr with exit status 2."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from unitok.cli import main
from unitok.generation import TASKS, Pipeline

POLICY = {"image_size": 32, "video_size": 16, "video_frames": 5, "video_fps": 8.0, "audio_max_seconds": 0.2}


def _checkpoint(d, toks, cond_dropout=0.1, max_seq_len=512):
    from unitok.checkpoint import save_checkpoint
    from unitok.config import to_dict
    from unitok.model.config import debug
    from unitok.model.transformer import UnifiedTransformer
    from unitok.vocab import UnifiedVocab

    vocab = UnifiedVocab.from_tokenizers(toks.values(), max_size=64)
    torch.manual_seed(0)
    cfg = debug(vocab_size=vocab.size, max_seq_len=max_seq_len)
    save_checkpoint(d / "checkpoint", kind="transformer", config=to_dict(cfg), modules={"model": UnifiedTransformer(cfg)},
                    state={"step": 0, "task": {"cond_dropout": cond_dropout, "policy": POLICY}}, vocab=vocab,
                    tokenizers=toks)
    return d


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """RUN (all four tokenizers), RUN_NO_AUDIO, RUN_NO_CFG (cond_dropout 0) and input files."""
    from skimage import data

    from unitok.data.media import write_video
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.text import TextTokenizer
    from unitok.tokenizers.video import VideoTokenizer, video_preset

    d = tmp_path_factory.mktemp("pipeline")
    (d / "t.txt").write_text("a photo of a cat. the sound of a bird. a dog on a mat. a red square.\n" * 50)
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(torch.rand(4, 3, 32, 32) * 2 - 1)  # k-means-initialise the codebooks, as training would
    vid = VideoTokenizer(video_preset("debug")).eval()
    vid.encode(torch.rand(2, 3, 5, 16, 16) * 2 - 1)
    toks = {"text": TextTokenizer.train([d / "t.txt"], vocab_size=300), "image": img, "video": vid,
            "audio": AudioTokenizer(AudioTokenizerConfig.tiny()).eval()}
    a = {"run": _checkpoint(d / "run", toks),
         "no_audio": _checkpoint(d / "no_audio", {k: toks[k] for k in ("text", "image")}),
         "no_cfg": _checkpoint(d / "no_cfg", toks, cond_dropout=0.0),
         "image": d / "cat.png", "audio": d / "tone.wav", "corrupt": d / "broken.png"}
    Image.fromarray(data.chelsea()[:60, :90]).save(a["image"])  # not square: resized and centre-cropped
    t = np.arange(int(0.3 * 22050)) / 22050  # another rate: resampled to the codec's 16 kHz
    sf.write(a["audio"], (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    a["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    frames = np.stack([np.roll(data.astronaut()[:20, :24], 2 * i, axis=1) for i in range(12)])  # 1.5 s at 8 fps
    a["video"] = write_video(d / "clip", frames, 8.0)
    return a


@pytest.fixture(scope="module")
def pipe(assets):
    return Pipeline.from_pretrained(assets["run"])


MEDIA_TASKS = {  # task -> (keyword arguments, media shape of each sample)
    "text-to-image": (dict(prompt="a red square"), (32, 32, 3)),
    "image-to-image": (dict(size=32), (32, 32, 3)),
    "text-to-audio": (dict(prompt="the sound of a bird", seconds=0.1), (1, 1600)),
    "video-continuation": (dict(frames=9), (9, 16, 16, 3)),
}


def _inputs(task, assets):
    return {k: assets[k] for k in TASKS[task].inputs}


@pytest.mark.parametrize("task", MEDIA_TASKS)
def test_media_spans_decode_to_the_requested_shape(task, pipe, assets):
    kw, shape = MEDIA_TASKS[task]
    for seed in range(4):
        r = pipe(task, **kw, **_inputs(task, assets), n=2, seed=seed, cfg=1.0 if seed % 2 else 2.0)
        assert len(r.samples) == 2
        for s in r.samples:
            assert s.media.shape == shape, (task, seed, s.media.shape)
            assert s.span["modality"] == TASKS[task].output
    grid = {"text-to-image": [8, 8], "image-to-image": [8, 8], "text-to-audio": [4, 25],
            "video-continuation": [3, 4, 4]}[task]  # f4 images, 4 levels x 25 frames, 9 frames -> 3 latent
    assert r.samples[0].span["codes_shape"] == grid
    new = {"image-to-image": 32, "video-continuation": 16}.get(task, int(np.prod(grid)))  # after the given codes
    assert r.samples[0].span["generated_codes"] == new and len(r.samples[0].ids) == new + 1  # + end marker
    assert np.isfinite(r.samples[0].media.astype(np.float64)).all()


def test_image_to_image_keeps_the_upper_half_and_decodes_the_whole_grid(pipe, tmp_path):
    from skimage import data

    from unitok.data.media import to_tensor, to_uint8

    img = np.asarray(Image.fromarray(data.astronaut()).resize((32, 32)))  # the policy's size: used as it is
    Image.fromarray(img).save(tmp_path / "square.png")
    tok = pipe.tokenizers["image"]
    with torch.no_grad():
        codes = tok.encode(to_tensor(img)[None])[0].numpy()  # (8, 8)
    assert not np.array_equal(codes[:4], codes[4:])  # the halves differ: taking the wrong one shows
    for seed in range(2):
        r = pipe("image-to-image", image=tmp_path / "square.png", seed=seed)
        s = r.samples[0]
        span = pipe.vocab.unpack(r.prompt_ids[r.prompt_ids.index(pipe.vocab.special["<boi>"]):] + s.ids)
        assert not span.problems
        grid = np.asarray(span.segments[0]["image"])
        assert np.array_equal(grid[:4], codes[:4])  # the input's upper rows, then 4 generated rows
        with torch.no_grad():
            assert np.array_equal(s.media, to_uint8(tok.decode(torch.from_numpy(grid)[None]))[0])


def test_defaults_come_from_the_recorded_policy_and_audio_may_close_early(pipe, assets):
    assert pipe("text-to-image", prompt="a cat").samples[0].media.shape == (32, 32, 3)  # POLICY image_size
    r = pipe("video-continuation", video=assets["video"])  # input clip of 5 frames, as many again
    assert r.samples[0].media.shape == (9, 16, 16, 3) and r.settings["input_frames"] == 5
    for seed in range(3):  # without --seconds the model may close the span; at most 0.2 s
        y = pipe("text-to-audio", prompt="a bird", seed=seed).samples[0].media
        assert y.shape[0] == 1 and 0 < y.shape[1] <= 3200 and y.shape[1] % 64 == 0


@pytest.mark.parametrize("task", ["text-to-text", "image-to-text", "audio-to-text"])
def test_text_tasks_give_text_only(task, pipe, assets):
    r = pipe(task, prompt="a" if task == "text-to-text" else "", **_inputs(task, assets), n=2, seed=1,
             max_new_tokens=20)
    v = pipe.vocab
    for s in r.samples:
        assert isinstance(s.text, str) and 1 <= len(s.ids) <= 20
        assert all(t < v.text_size for t in s.ids[:-1]) and (s.ids[-1] < v.text_size or s.ids[-1] == v.eos)
    if task == "image-to-text":  # the prompt holds the whole image span, as pretokenize packs it
        assert r.prompt_ids[1] == v.special["<boi>"] and r.prompt_ids[-1] == v.special["<eoi>"]


def test_files_are_written_and_readable(pipe, assets, tmp_path):
    from unitok.data.media import read_video

    for task, (kw, shape) in MEDIA_TASKS.items():
        out = tmp_path / task
        r = pipe(task, **kw, **_inputs(task, assets), n=2, seed=0, out=out)
        js = json.loads((out / "generation.json").read_text())
        assert js["task"] == task and js["prompt_ids"] == r.prompt_ids and len(js["samples"]) == 2
        assert {"generate_s", "tokens_per_s", "total_s"} <= set(js["timings"])
        assert js["settings"]["seed"] == 0 and js["settings"]["sampling"]["image"]["top_k"] == 0
        for s, rec in zip(r.samples, js["samples"]):
            f = out / rec["file"]
            assert rec["ids"] == s.ids and rec["span"]["codes_shape"] == s.span["codes_shape"] and f.is_file()
            if task.endswith("image"):
                assert np.array_equal(np.asarray(Image.open(f)), s.media)  # PNG is lossless
            elif task == "text-to-audio":
                y, sr = sf.read(f, always_2d=True)
                assert sr == 16000 and y.T.shape == shape
            else:
                assert f.suffix in (".mp4", ".gif") and read_video(f).shape == shape
    r = pipe("text-to-text", prompt="a cat", max_new_tokens=5, out=tmp_path / "t")
    assert (tmp_path / "t" / "sample0.txt").read_text() == r.samples[0].text + "\n"


def test_same_seed_same_output_and_cfg_1_is_plain_sampling(pipe):
    from unitok.generation import generate_batch

    a = pipe("text-to-image", prompt="a cat", n=2, seed=3)
    b = pipe("text-to-image", prompt="a cat", n=2, seed=3, cfg=1.0)
    assert [s.ids for s in a.samples] == [s.ids for s in b.samples]
    assert [s.ids for s in pipe("text-to-image", prompt="a cat", n=2, seed=4).samples] != [s.ids for s in a.samples]
    # the pipeline at scale 1 is the plain sampler on the same prompt and grammar
    plain = generate_batch(pipe.model, [a.prompt_ids] * 2, 65, seed=3, grammar=pipe.grammar,
                           stop_ids=[pipe.vocab.special["<eoi>"]])
    assert plain == [s.ids for s in a.samples]
    g = pipe("text-to-image", prompt="a cat", n=2, seed=3, cfg=3.0)  # guided: other ids, still whole spans
    assert [s.ids for s in g.samples] != plain and g.samples[0].media.shape == (32, 32, 3)


def _fails(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("unitok: error: "), err
    for n in needles:
        assert n in err, (n, err)


def test_bad_input_is_one_line(assets, tmp_path, capsys):
    run, out = str(assets["run"]), str(tmp_path / "o")
    g = ["generate", run, "--out", out, "--task"]
    _fails(capsys, g + ["text-to-video"], "unknown task 'text-to-video'", *TASKS)
    _fails(capsys, ["generate", str(assets["no_audio"]), "--out", out, "--task", "text-to-audio", "--prompt", "hi"],
           "needs an audio tokenizer", "has image, text")
    _fails(capsys, g + ["image-to-text", "--image", str(tmp_path / "missing.png")], "image not found")
    _fails(capsys, g + ["image-to-text", "--image", str(assets["corrupt"])], "unreadable image")
    _fails(capsys, g + ["audio-to-text", "--audio", str(assets["corrupt"])], "broken.png")
    _fails(capsys, g + ["text-to-image", "--size", "30"], "not a multiple", "factor 4")
    _fails(capsys, g + ["video-continuation", "--video", str(assets["video"]), "--frames", "8"], "1 + 4k")
    _fails(capsys, g + ["text-to-image", "--size", "256"], "exceeds the model's context of 512")
    _fails(capsys, g + ["text-to-audio", "--seconds", "1"], "exceeds the model's context")
    _fails(capsys, g + ["text-to-text", "--max-new-tokens", "600"], "exceeds the model's context")
    _fails(capsys, g + ["image-to-text"], "needs an input image", "--image")
    _fails(capsys, g + ["text-to-image", "--audio", str(assets["audio"])], "takes no audio")
    _fails(capsys, ["generate", str(assets["no_cfg"]), "--out", out, "--task", "text-to-image", "--cfg", "3"],
           "condition dropout")
    _fails(capsys, g + ["text-to-text", "--cfg", "3"], "inside media spans")
    _fails(capsys, ["generate", str(tmp_path / "nope"), "--out", out, "--task", "text-to-text"], "not found")


def test_cli_writes_the_outputs_and_help_lists_the_tasks(assets, tmp_path, capsys):
    out = tmp_path / "tts"
    assert main(["generate", str(assets["run"]), "--task", "text-to-audio", "--prompt", "a bird", "--seconds", "0.05",
                 "--n", "2", "--top-k", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sample1.wav" in printed and "generation.json" in printed
    js = json.loads((out / "generation.json").read_text())
    assert js["settings"]["sampling"]["audio"]["top_k"] == 10 and js["settings"]["frames"] == 13
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    helptext = capsys.readouterr().out
    assert all(t in helptext for t in TASKS)


def test_three_line_python_api(assets, tmp_path):
    pipe = Pipeline.from_pretrained(assets["run"])
    result = pipe("image-to-text", image=assets["image"], out=tmp_path / "caption", max_new_tokens=8)
    print(result.samples[0].text)
    assert (tmp_path / "caption" / "sample0.txt").is_file() and result.settings["size"] == 32


def test_progress_lines_off_a_terminal(capsys):
    from unitok.generation.pipeline import _Progress

    p = _Progress(1000, "text-to-image", True, every=0.0)
    p.update(500)
    p.close()
    assert "500/1000 tokens (50%)" in capsys.readouterr().err
    quiet = _Progress(100, "text-to-image", True, every=0.0)  # a short run: nothing
    quiet.update(50)
    assert capsys.readouterr().err == ""
