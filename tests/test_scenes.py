"""The scenes data set (unitok.data.scenes): deterministic, the held-out parts really absent from training,
captions that read back to what they state, the layout pretokenize reads, one-line errors."""

import json
from pathlib import Path

import numpy as np

from unitok.data import scenes
from unitok.data.scenes import HELD_OUT_PAIRS, HELD_OUT_TEMPLATES, HELD_OUT_VOICES, ScenesConfig, write_scenes
from tests.test_cli import assert_user_error, run_cli


def _files(root: Path) -> dict:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    # separate processes, as eSpeak NG keeps state from one utterance to the next (the same sequence of
    # utterances in a fresh process gives the same samples)
    for name in "ab":
        r = run_cli("data", "scenes", "--out", str(tmp_path / name), "--n", "16", "--clips", "4", "--speech", "4",
                    "--seed", "3")
        assert r.returncode == 0, r.stderr
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b
    assert len(a) > 16 + 4 and any(k.endswith(".wav") for k in a) and any(k.endswith((".mp4", ".gif")) for k in a)
    write_scenes(tmp_path / "c", ScenesConfig(n=16, clips=4, speech=0, seed=4), log=lambda s: None)
    other = _files(tmp_path / "c")
    assert a["train/images/captions.tsv"] != other["train/images/captions.tsv"]
    assert all(a[k] != other[k] for k in a if k.endswith(".png") and k in other)


def _pairs(item) -> set:
    objs = item["objects"] if item["kind"] == "image" else [item["object"]]
    return {(o["colour"], o["shape"]) for o in objs}


def test_held_out_combinations_templates_and_voices_never_reach_training(tmp_path):
    s = write_scenes(tmp_path, ScenesConfig(n=400, clips=80, speech=0, seed=1), log=lambda s: None)
    items = json.loads((tmp_path / "scenes.json").read_text())["items"]
    train = [it for it in items if it["split"] == "train"]
    held = [it for it in items if it["split"] == "held_out"]
    assert len(train) > 250 and s["counts"]["seen"]["image"] > 10
    assert not any(_pairs(it) & set(HELD_OUT_PAIRS) for it in train)
    assert not any(it["template"] in HELD_OUT_TEMPLATES for it in train)
    # every held-out combination and template is there to be measured, and each held-out item says why
    assert set(HELD_OUT_PAIRS) <= set().union(*(_pairs(it) for it in held))
    assert set(HELD_OUT_TEMPLATES) <= {it["template"] for it in held}
    for it in held:
        assert (it["reason"] == "template") == (it["template"] in HELD_OUT_TEMPLATES)
        assert (it["reason"] == "combination") == bool(_pairs(it) & set(HELD_OUT_PAIRS))
    # each colour and each shape is seen in training, only not in the held-out pairing
    seen = set().union(*(_pairs(it) for it in train))
    assert {c for c, _ in seen} == set(scenes.COLOURS) and {s for _, s in seen} == set(scenes.SHAPES)
    # the captions.tsv files hold exactly their split's items
    for split in scenes.SPLITS:
        listed = (tmp_path / split / "images" / "captions.tsv").read_text().splitlines()
        assert sorted(listed) == sorted(f"{Path(it['file']).name}\t{it['caption']}" for it in items
                                        if it["split"] == split and it["kind"] == "image")


def test_speech_voices_follow_the_split():
    cfg = ScenesConfig(n=300, seed=2)
    images = [scenes._image_item(i, cfg)[0] for i in range(300)]
    speech = [scenes._speech_item(i, im, cfg) for i, im in enumerate(images)]
    assert all(s["voice"] not in HELD_OUT_VOICES for s in speech if s["split"] == "train")
    assert all(s["split"] == "held_out" for s in speech if s["voice"] in HELD_OUT_VOICES)
    assert {s["voice"] for s in speech if s["split"] == "held_out"} >= set(HELD_OUT_VOICES)
    assert {s["reason"] for s in speech if s["split"] == "held_out"} == {"combination", "template", "voice"}
    assert all(s["caption"] == im["caption"] and s["split"] in (im["split"], "held_out")
               for s, im in zip(speech, images))


def test_captions_read_back_to_what_they_state():
    cfg = ScenesConfig(n=10, seed=5)
    templates = set()
    for i in range(300):
        item, _ = scenes._image_item(i, cfg)
        objs = [scenes.Obj(**o) for o in item["objects"]]
        assert scenes.parse_caption(item["caption"]) == scenes.claim_of(item["template"], objs), item
        templates.add(item["template"])
    assert templates == set(scenes.TEMPLATES)
    for i in range(40):
        item, _ = scenes._clip_item(i, cfg)
        claim = scenes.parse_caption(item["caption"])
        assert claim.motion == (item["direction"], item["speed"])
        assert (claim.objects[0].colour, claim.objects[0].shape) == (item["object"]["colour"], item["object"]["shape"])
    assert scenes.parse_caption("A Red circle, at the top left.") == scenes.parse_caption("a red circle at the top left")
    for text in ("a red banana", "two red circle", "a red circle at the top middle", "hello", ""):
        assert scenes.parse_caption(text) is None, text


def test_the_speech_grammar_holds_every_image_caption():
    import pocketsphinx

    fsg = pocketsphinx.Decoder(lm=None, loglevel="ERROR").parse_jsgf(scenes.jsgf())
    cfg = ScenesConfig(n=10, seed=6)
    for i in range(200):
        caption = scenes._image_item(i, cfg)[0]["caption"]
        assert fsg.accept(caption), caption
    assert not fsg.accept("a orange circle") and not fsg.accept("a red circle moves left slowly")


def test_objects_are_drawn_where_the_ground_truth_says():
    cfg = ScenesConfig(n=10, seed=7)
    for i in range(30):
        item, img = scenes._image_item(i, cfg)
        for o in item["objects"]:
            assert o["row"] == int(o["y"] * 3 / cfg.px) and o["col"] == int(o["x"] * 3 / cfg.px)
            pixel = img[int(o["y"] + o["side"] / 4), int(o["x"])]  # inside every shape (below a triangle's apex)
            assert np.abs(pixel.astype(int) - scenes.COLOURS[o["colour"]]).max() <= 2, (item["caption"], pixel)
        grey = img[..., 0].astype(int) == img[..., 2]
        assert grey.mean() > 0.6  # the background is grey


def test_pretokenize_reads_the_folders(tmp_path):
    from unitok.data.pretokenize import PretokenizeConfig, iter_documents

    write_scenes(tmp_path, ScenesConfig(n=12, clips=4, speech=3, seed=0), log=lambda s: None)
    folders = [str(p) for p in sorted(tmp_path.glob("train/*"))]
    skipped = []
    docs = list(iter_documents(folders, PretokenizeConfig(), skipped))
    assert not skipped
    kinds = {k for _, segs in docs for k, _ in segs}
    assert kinds == {"text", "image", "video", "audio"}
    assert all(len(segs) == 2 and "text" in {k for k, _ in segs} for _, segs in docs)


def test_bad_arguments_are_one_line_errors(tmp_path):
    assert_user_error(run_cli("data", "scenes", "--out", str(tmp_path / "a"), "--n", "-1"), "n must be >= 0")
    assert_user_error(run_cli("data", "scenes", "--out", str(tmp_path / "a"), "--n", "4", "--prompt-frames", "9"),
                      "prompt_frames")
    assert_user_error(run_cli("data", "scenes", "--out", str(tmp_path / "a"), "--n", "4", "--speech", "5"),
                      "at most --n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert_user_error(run_cli("data", "scenes", "--out", str(tmp_path / "full"), "--n", "2"), "not an empty folder")
