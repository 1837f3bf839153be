"""`unitok bench judge RUN`: a tiny unified run, trained here on scenes data, goes through every task
end to end and the JSON has the keys of `--ground-truth`; a run without an audio tokenizer skips the
speech tasks with the reason; bad input is a one-line error."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.cli import main
from unitok.data.scenes import ScenesConfig, write_scenes
from tests.test_cli import assert_user_error, run_cli
from tests.test_judges import TASKS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """scenes data (32 px, speech), tokenizers (untrained media ones, k-means initialised), shards of the
    training split and a unified model trained for a few steps on them."""
    from unitok.data.pretokenize import PretokenizeConfig, pretokenize
    from unitok.model.config import ModelConfig
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.text import TextTokenizer
    from unitok.tokenizers.video import VideoTokenizer, video_preset
    from unitok.training.loop import RunConfig
    from unitok.training.unified import UnifiedConfig, train_unified

    d = tmp_path_factory.mktemp("judge_run")
    data = d / "scenes"
    write_scenes(data, ScenesConfig(n=24, clips=8, speech=24, px=32, seed=0, seen_fraction=0.25,
                                    held_out_fraction=0.3), log=lambda s: None)
    items = json.loads((data / "scenes.json").read_text())["items"]
    (d / "captions.txt").write_text("\n".join(it["caption"] for it in items) * 4 + "\n")
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(torch.rand(4, 3, 32, 32) * 2 - 1)  # k-means-initialise the codebooks, as training would
    vid = VideoTokenizer(video_preset("debug")).eval()
    vid.encode(torch.rand(2, 3, 5, 16, 16) * 2 - 1)
    aud = AudioTokenizer(AudioTokenizerConfig.tiny(upsampling_ratios=[8, 8, 8], levels=2)).eval()  # 31 frames/s
    toks = {"text": TextTokenizer.train([d / "captions.txt"], vocab_size=320), "image": img, "video": vid, "audio": aud}
    dirs = {}
    for name, tok in toks.items():
        tok.save_pretrained(d / name)
        dirs[name] = d / name
    policy = PretokenizeConfig(image_size=32, video_size=16, video_frames=9, video_fps=8.0, audio_max_seconds=4.0)
    inputs = [data / "train" / k for k in ("images", "video", "speech")]
    pretokenize(inputs, list(dirs.values()), d / "shards", policy, progress=False)
    cfg = UnifiedConfig(model=ModelConfig(dim=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=512), seq_len=256,
                        batch_size=2, eval_fraction=0.1, eval_every=0, eval_batches=1,
                        run=RunConfig(max_steps=3, log_every=1, ckpt_every=0))
    train_unified(cfg, d / "shards", d / "run", progress=False)
    return {"dir": d, "data": data, "run": d / "run", "toks": toks}


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
    assert png.shape == (2 * 2 * 32, 8 * 32, 3)  # per split: truth row, generated row; 32 px (the policy's size)
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
        assert report["tasks"][name]["skipped"] == "the run has no audio tokenizer (its vocabulary has image, text, video)"


def test_bench_judge_run_bad_input_is_one_line(trained, tmp_path):
    data, run, j = str(trained["data"]), str(trained["run"]), str(tmp_path / "j.json")
    assert_user_error(run_cli("bench", "judge", str(tmp_path / "nothing"), "--data", data, "--json", j), "nothing")
    assert_user_error(run_cli("bench", "judge", run, "--data", str(tmp_path), "--json", j), "no scenes.json")
    assert_user_error(run_cli("bench", "judge", run, "--data", data, "--json", j, "--head", "diffusion"),
                      "the diffusion head does not exist yet")
    assert_user_error(run_cli("bench", "judge", run, "--data", data, "--ground-truth", "--json", j), "one of them")
    assert_user_error(run_cli("bench", "judge", "--data", data, "--json", j), "one of them")
