"""The scenes judges (unitok.bench.judges): accurate on ground-truth renders, and they notice when a caption
does not fit; the WER formula against jiwer's; `unitok bench judge --ground-truth`."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from unitok.bench import judges
from unitok.data import scenes
from unitok.data.scenes import ScenesConfig, parse_caption
from unitok.metrics import wer
from tests.test_cli import assert_user_error, run_cli


@pytest.mark.parametrize("px,n", [(64, 400), (32, 300)])
def test_image_judge_finds_every_object_of_ground_truth_renders(px, n):
    cfg = ScenesConfig(n=10, px=px, seed=11)
    exact, overall = 0, 0
    for i in range(n):
        item, img = scenes._image_item(i, cfg)
        truth = sorted((o["colour"], o["shape"], o["size"], o["row"], o["col"]) for o in item["objects"])
        exact += truth == sorted((f.colour, f.shape, f.size, f.row, f.col) for f in judges.find_objects(img))
        overall += judges.judge_image(img, parse_caption(item["caption"]))["overall"]
    print(f"{px} px: exact {exact}/{n}, overall {overall}/{n}")
    assert exact >= 0.99 * n and overall >= 0.99 * n


def test_image_judge_notices_each_wrong_statement():
    cfg = ScenesConfig(n=10, seed=12)
    rng = random.Random(0)
    checked = set()
    for i in range(80):
        item, img = scenes._image_item(i, cfg)
        claim = parse_caption(item["caption"])
        a = claim.objects[0]
        other_colour = rng.choice([c for c in scenes.COLOURS if c != a.colour])
        other_shape = rng.choice([s for s in scenes.SHAPES if s != a.shape])
        wrong = {"colour": replace(a, colour=other_colour), "object": replace(a, shape=other_shape)}
        if a.cell is not None:
            wrong["position"] = replace(a, cell=(a.cell[0], (a.cell[1] + 1) % 3))
        if a.size is not None:
            wrong["size"] = replace(a, size="small" if a.size == "large" else "large")
        for check, obj in wrong.items():
            objs = (obj,) * len(claim.objects) if item["template"].startswith("count") else (obj,) + claim.objects[1:]
            got = judges.judge_image(img, replace(claim, objects=objs))
            assert got[check] is False and got["overall"] is False, (item["caption"], check, got)
            checked.add(check)
        extra = judges.judge_image(img, replace(claim, objects=claim.objects + (claim.objects[0],)))
        assert extra["count"] is False and extra["overall"] is False
        if claim.relation:
            flipped = judges.judge_image(img, replace(claim, objects=claim.objects[::-1]))
            assert flipped["position"] is False and flipped["overall"] is False, item["caption"]
            checked.add("relation")
    assert checked == {"colour", "object", "position", "size", "relation"}


def test_caption_accuracy_scores_each_statement():
    o = scenes.Obj("red", "circle", "small", 0, 0, 10.0, 10.0, 9.0)
    assert judges.caption_accuracy("a small red circle at the top left", [o], 64) == 1.0
    assert judges.caption_accuracy("a red circle", [o], 64) == 1.0  # another template, nothing false
    # count, colour (wrong), shape, size, cell: 4 of 5
    assert judges.caption_accuracy("a small blue circle at the top left", [o], 64) == pytest.approx(4 / 5)
    # count (wrong), colour, shape, cell; the second object is not there (colour and shape wrong)
    assert judges.caption_accuracy("a red circle at the top left and a blue square at the bottom", [o], 64) == \
        pytest.approx(3 / 6)
    b = scenes.Obj("blue", "square", "large", 2, 2, 54.0, 54.0, 16.0)
    assert judges.caption_accuracy("a red circle to the left of a blue square", [o, b], 64) == 1.0
    assert judges.caption_accuracy("a blue square to the left of a red circle", [o, b], 64) == pytest.approx(5 / 6)
    assert judges.caption_accuracy("a cat on a mat", [o], 64) == 0.0


def test_motion_judge_on_ground_truth_clips(tmp_path):
    from unitok.data.media import read_video, write_video

    cfg = ScenesConfig(n=10, seed=13)
    directions = set()
    for i in range(24):
        item, frames = scenes._clip_item(i, cfg)
        clip = read_video(write_video(tmp_path / f"c{i}", frames, cfg.fps))  # through H.264, as stored
        assert judges.judge_motion(clip[cfg.prompt_frames - 1:]) == (item["direction"], item["speed"]), item["caption"]
        back = judges.judge_motion(clip[::-1])[0]
        assert scenes.DIRECTIONS[back] == tuple(-v for v in scenes.DIRECTIONS[item["direction"]])
        directions.add(item["direction"])
    assert directions == set(scenes.DIRECTIONS)
    assert judges.judge_motion(np.repeat(frames[:1], 5, axis=0)) == (None, None)
    assert judges.judge_motion(np.full_like(frames, 128)) == (None, None)


def test_speech_judge_floor_on_espeak_renders():
    from unitok.data.speech import Espeak

    tts, judge = Espeak(), judges.SpeechJudge()
    cfg = ScenesConfig(n=10, seed=14)
    voices = scenes.VOICES[::3] + scenes.HELD_OUT_VOICES
    refs, hyps = [], []
    for i, voice in enumerate(voices):
        caption = scenes._image_item(i, cfg)[0]["caption"]
        pcm, sr = tts.say(caption, voice=voice, rate=130 + 5 * i, pitch=35 + 3 * i, seed=i)
        refs.append(caption)
        hyps.append(judge.transcribe(pcm, sr))
    print("speech judge floor", wer(hyps, refs), list(zip(refs, hyps)))
    assert wer(hyps, refs) <= 0.1
    # it hears only the captions' language: anything else becomes a caption (or nothing), mostly wrong
    pcm, sr = tts.say("the weather is lovely in spring", voice="en-us", seed=0)
    heard = judge.transcribe(pcm, sr)
    assert heard == "" or parse_caption(heard) is not None
    noise = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    assert wer(judge.transcribe(noise, 16000), refs[0]) >= 0.5
    assert judge.transcribe(np.zeros(16000, np.float32), 16000) != refs[0]


def test_wer_equals_jiwers():
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(0)
    words = "a an red blue circle square at the top left and above".split()
    refs, hyps = [], []
    for _ in range(200):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 4)):  # substitutions, deletions, insertions
            k = rng.randrange(len(hyp) + 1)
            op = rng.choice("sdi")
            if op == "i" or not hyp:
                hyp.insert(k, rng.choice(words))
            elif op == "d":
                del hyp[min(k, len(hyp) - 1)]
            else:
                hyp[min(k, len(hyp) - 1)] = rng.choice(words)
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
        assert wer(hyps[-1], refs[-1]) == pytest.approx(jiwer.wer(refs[-1], hyps[-1]), abs=1e-12)
    assert wer(hyps, refs) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert wer("", "a red circle") == 1.0 and wer("a  red\tcircle ", "a red circle") == 0.0
    with pytest.raises(ValueError):
        wer(["a"], ["  "])


TASKS = {"text_to_image": "accuracy", "image_to_text": "accuracy", "text_to_audio": "wer", "audio_to_text": "wer",
         "video_continuation": "accuracy"}


def test_bench_judge_ground_truth_scores_the_judges(tmp_path):
    from unitok.cli import main

    data = tmp_path / "scenes"
    scenes.write_scenes(data, ScenesConfig(n=60, clips=16, speech=60, seed=0, seen_fraction=0.3,
                                           held_out_fraction=0.3), log=lambda s: None)
    assert main(["bench", "judge", "--data", str(data), "--ground-truth", "--json", str(tmp_path / "j.json"),
                 "--max-items", "12"]) == 0
    report = json.loads((tmp_path / "j.json").read_text())
    assert report["mode"] == "ground_truth" and set(report["tasks"]) == set(TASKS)
    for name, metric in TASKS.items():
        t = report["tasks"][name]
        assert t["metric"] == metric
        for where in (t, t["chance"], t["nearest_training"]):
            for split in ("seen", "held_out"):
                assert set(where[split]) >= {metric, "n"} and where[split]["n"] > 0, (name, split)
    tasks = report["tasks"]
    for name in ("text_to_image", "image_to_text", "video_continuation"):
        assert tasks[name]["seen"]["accuracy"] == 1.0 and tasks[name]["held_out"]["accuracy"] == 1.0, name
    assert tasks["audio_to_text"]["seen"]["wer"] == 0.0 and tasks["audio_to_text"]["held_out"]["wer"] == 0.0
    assert tasks["text_to_audio"]["seen"]["wer"] <= 0.1 and tasks["text_to_audio"]["held_out"]["wer"] <= 0.1
    assert tasks["text_to_image"]["chance"]["held_out"]["accuracy"] < 0.5
    assert set(tasks["text_to_image"]["held_out"]["by_reason"]) == {"combination", "template"}
    assert tasks["text_to_image"]["held_out"]["colour"] == 1.0

    quiet = tmp_path / "quiet"
    scenes.write_scenes(quiet, ScenesConfig(n=20, clips=4, speech=0, seed=1), log=lambda s: None)
    assert main(["bench", "judge", "--data", str(quiet), "--ground-truth", "--json", str(tmp_path / "q.json"),
                 "--max-items", "3"]) == 0
    q = json.loads((tmp_path / "q.json").read_text())["tasks"]
    assert "skipped" not in q["text_to_image"] and q["text_to_image"]["seen"]["n"] <= 3
    assert q["text_to_audio"]["skipped"] == q["audio_to_text"]["skipped"] == "no speech items in the data"


def test_bench_judge_bad_arguments_are_one_line_errors(tmp_path):
    j = str(tmp_path / "j.json")
    assert_user_error(run_cli("bench", "judge", "--data", str(tmp_path), "--ground-truth", "--json", j), "no scenes.json")
    assert_user_error(run_cli("bench", "judge", "--data", str(tmp_path), "--json", j), "--ground-truth")


def test_tokenizer_bench_scores_speech_under_the_judge(tmp_path):
    """`unitok tokenizer bench` on spoken scene captions: the grammar judge, original WER at its floor,
    an untrained codec's reconstruction far above it; STOI beside it."""
    import soundfile as sf
    import torch

    from unitok.cli import main
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig

    data = tmp_path / "scenes"
    scenes.write_scenes(data, ScenesConfig(n=6, clips=0, speech=6, seed=2, seen_fraction=0, held_out_fraction=0),
                        log=lambda s: None)
    torch.manual_seed(0)
    AudioTokenizer(AudioTokenizerConfig.tiny()).eval().save_pretrained(tmp_path / "tok")
    j = tmp_path / "b.json"
    assert main(["tokenizer", "bench", str(tmp_path / "tok"), "--data", str(data / "train" / "speech"),
                 "--json", str(j)]) == 0
    r = json.loads(j.read_text())
    assert "grammar" in r["original"]["judge"] and r["original"]["reference"] == "the files' transcripts (6 of 6 files)"
    assert r["original"]["transcribed_files"] == 6 and r["original"]["wer"] <= 0.1
    assert r["ours"]["wer"] >= 0.5 and -1 <= r["ours"]["stoi"] <= 1
    assert all(isinstance(v["heard"], str) for v in r["ours"]["per_file"].values())
    assert "WER under the speech judge" in (tmp_path / "bench.md").read_text()

    # a file without a transcript is left out; transcripts are compared in lower case without punctuation
    speech = data / "train" / "speech"
    tsv = speech / "transcripts.tsv"
    lines = tsv.read_text().splitlines()
    name, caption = lines[0].split("\t")
    tsv.write_text("\n".join([f"{name}\t{caption[0].upper()}{caption[1:]}."] + lines[1:]) + "\n")
    sf.write(speech / "tone.wav", (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32), 16000)
    assert main(["tokenizer", "bench", str(tmp_path / "tok"), "--data", str(speech), "--json", str(j)]) == 0
    again = json.loads(j.read_text())
    assert "grammar" in again["original"]["judge"] and again["original"]["transcribed_files"] == 6
    assert again["original"]["reference"] == "the files' transcripts (6 of 7 files)"
    assert again["original"]["wer"] == r["original"]["wer"] and "tone.wav" in again["ours"]["per_file"]
