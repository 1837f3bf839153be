"""The scenes recipe (scripts/train_scenes.py --quick: data, tokenizers and a unified model trained
here, then judged) and `unitok bench judge RUN` on its run: every task end to end, the JSON has the
keys of `--ground-truth`; a run without an audio tokenizer skips the speech tasks with the reason; bad
input is a one-line error."""

import json

import numpy as np
import pytest
from PIL import Image

from unitok.apps.train_scenes import main as train_scenes
from unitok.cli import main
from tests.test_cli import assert_user_error, run_cli
from tests.test_judges import TASKS

STAGES = ("data", "text tokenizer", "image tokenizer", "video tokenizer", "audio tokenizer", "shards",
          "unified model", "judge")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The quick recipe's folder: 32 px scenes with speech, tokenizers and a unified model of a few steps."""
    from unitok.tokenizers.base import load_tokenizer

    d = tmp_path_factory.mktemp("judge_run") / "scenes"
    assert train_scenes(["--quick", "--out", str(d)]) == 0
    toks = {"text": load_tokenizer(d / "tokenizers" / "text")}
    toks.update({m: load_tokenizer(d / "tokenizers" / m / "final") for m in ("image", "video", "audio")})
    return {"dir": d, "data": d / "data", "run": d / "run", "toks": toks}


def _check_keys(report: dict, skipped=()):
    assert set(report["tasks"]) == set(TASKS)
    for name, metric in TASKS.items():
        t = report["tasks"][name]
        assert t["metric"] == metric
        if name in skipped:
            assert set(t) == {"metric", "skipped"}, name
            continue
        for where in (t, t["chance"], t["nearest_training"]):
            for split in ("seen", "held_out"):
                assert set(where[split]) >= {metric, "n"} and where[split]["n"] > 0, (name, split)
                assert 0 <= where[split][metric] <= (1 if metric == "accuracy" else 10), (name, split)
    t2i = report["tasks"].get("text_to_image", {})
    if "seen" in t2i:
        assert set(t2i["seen"]) >= {"object", "count", "colour", "accuracy"}


def test_bench_judge_scores_a_trained_run(trained, tmp_path):
    j, grid = tmp_path / "j.json", tmp_path / "grid"
    assert main(["bench", "judge", str(trained["run"]), "--data", str(trained["data"]), "--json", str(j),
                 "--out", str(grid), "--max-items", "2"]) == 0
    report = json.loads(j.read_text())
    assert report["mode"] == "run" and report["head"] == "discrete" and report["run"] == str(trained["run"])
    _check_keys(report)
    png = np.asarray(Image.open(grid / "text_to_image.png"))
    n = {s: report["tasks"]["text_to_image"][s]["n"] for s in ("seen", "held_out")}
    assert png.shape == (2 * 2 * 32, 2 * 32, 3)  # per split: truth row, generated row; 32 px (the policy's size)
    truth, made = png[:32, :32].astype(int), png[32:64, :32].astype(int)
    assert np.abs(truth - made).mean() > 10  # the run's picture, not the data's
    assert [len(c) for c in report["grid"]["captions"].values()] == [n["seen"], n["held_out"]]


def test_bench_judge_skips_tasks_the_run_has_no_tokenizer_for(trained, tmp_path):
    from tests.test_pipeline import _checkpoint

    toks = {k: v for k, v in trained["toks"].items() if k != "audio"}
    run = _checkpoint(tmp_path / "no_audio", toks)
    j = tmp_path / "j.json"
    assert main(["bench", "judge", str(run), "--data", str(trained["data"]), "--json", str(j), "--max-items", "2"]) == 0
    report = json.loads(j.read_text())
    _check_keys(report, skipped={"text_to_audio", "audio_to_text"})
    for name in ("text_to_audio", "audio_to_text"):
        why = report["tasks"][name]["skipped"]
        assert why == "the run has no audio tokenizer (its vocabulary has image, text, video)"


def test_bench_judge_run_bad_input_is_one_line(trained, tmp_path):
    data, run, j = str(trained["data"]), str(trained["run"]), str(tmp_path / "j.json")
    assert_user_error(run_cli("bench", "judge", str(tmp_path / "nothing"), "--data", data, "--json", j), "nothing")
    assert_user_error(run_cli("bench", "judge", run, "--data", str(tmp_path), "--json", j), "no scenes.json")
    assert_user_error(run_cli("bench", "judge", run, "--data", data, "--json", j, "--head", "diffusion"),
                      "the diffusion head does not exist yet")
    assert_user_error(run_cli("bench", "judge", run, "--data", data, "--ground-truth", "--json", j), "one of them")
    assert_user_error(run_cli("bench", "judge", "--data", data, "--json", j), "one of them")


def test_recipe_writes_every_stage_and_resumes(trained, capsys):
    """A stage whose output is there is skipped; a tokenizer without its final folder resumes its checkpoint."""
    d = trained["dir"]
    _check_keys(json.loads((d / "judge.json").read_text()))
    assert set(json.loads((d / "recipe.json").read_text())["seconds"]) == set(STAGES)
    assert (d / "judge" / "text_to_image.png").is_file()
    settings = json.loads((d / "recipe.json").read_text())["settings"]
    assert settings["scenes"]["px"] == 32 and settings["unified"]["run"]["max_steps"] == 3  # the quick block
    import shutil

    shutil.rmtree(d / "tokenizers" / "image" / "final")  # as if interrupted after its last checkpoint
    capsys.readouterr()
    assert train_scenes(["--quick", "--out", str(d), "judge.max_items=1"]) == 0  # the image tokenizer and the judge
    printed = capsys.readouterr().out
    for stage in STAGES[:-1]:
        assert (f"train_scenes: {stage}: already there, skipped" in printed) == (stage != "image tokenizer"), stage
    assert "resumed from" in printed and (d / "tokenizers" / "image" / "final").is_dir()
    assert json.loads((d / "judge.json").read_text())["tasks"]["text_to_image"]["seen"]["n"] == 1


def test_recipe_bad_settings_are_one_line(tmp_path, capsys):
    for args, msg in [(["tokenizers.image.recipe=tokenizers/nope.yaml"], "config file not found"),
                      (["tokenizers.image.recipe=tokenizers/audio-encodec-16k/config.yaml"], "is a recipe for audio"),
                      (["scenes.px=8"], "px must be >= 24"), (["unified.nope=1"], "nope")]:
        assert train_scenes(["--quick", "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("train_scenes: error: ") and msg in err and err.count("\n") == 1, (args, err)
        assert not (tmp_path / "x" / "data").exists()  # checked before the first stage


def test_full_recipe_settings_check_and_fit_the_budgets():
    import math

    from unitok.apps.train_scenes import ROOT, check, settings

    scenes, policy, recipes, unified, judge = check(settings(ROOT / "configs/train/scenes-cpu.yaml", False, []))
    assert set(recipes) == {"image", "video", "audio"}
    assert sum(r.run.max_minutes for r in recipes.values()) <= 20 and unified.run.max_minutes <= 30
    assert scenes.px == policy.image_size == policy.video_size and scenes.frames == policy.video_frames
    assert recipes["image"].data.color_aug == 0  # a channel permutation renames the colours
    audio = recipes["audio"].model
    per_second = audio.sample_rate / math.prod(audio.upsampling_ratios) * audio.levels
    assert per_second * policy.audio_max_seconds + 40 <= unified.seq_len  # a recording and its caption fit a row
