"""`unitok bench overfit`: the mechanics on a tiny budget (the acceptance run itself is in docs/generation.md).
The bench's answers are the model's greedy ones, measured again here from the run's checkpoint."""

import json

import numpy as np
import pytest
import torch


def test_overfit_bench_writes_every_item_and_its_verdict(tmp_path, monkeypatch):
    from unitok.cli import main
    from unitok.data.media import to_uint8
    from unitok.data.speech import Espeak
    from unitok.generation import Pipeline
    from unitok.metrics import cer, psnr

    Espeak()  # eSpeak NG is a core dependency (pyproject.toml): if it cannot load, this test fails, never skips
    made, call = {}, Pipeline.__call__

    def spy(pipe, task, *a, **kw):  # what the bench asks the model for, and what it gets
        result = call(pipe, task, *a, **kw)
        made.setdefault(task, []).append(result.samples[0])
        return result

    monkeypatch.setattr(Pipeline, "__call__", spy)
    out = tmp_path / "o"
    rc = main(["bench", "overfit", "--out", str(out), "--pairs", "1", "--minutes", "0.05",
               "--tokenizer-seconds", "2", "--batch-size", "2"])
    monkeypatch.undo()
    r = json.loads((out / "overfit.json").read_text())
    assert rc == (0 if r["pass"] else 1)
    assert r["pass"] == (r["pass_image"] and r["pass_caption"] and r["pass_transcript"])
    kinds = [i["kind"] for i in r["items"]]
    assert kinds == ["image", "speech"] and r["documents"] == 4  # one pair of each, both orders
    img = r["items"][0]
    assert 0 < img["psnr_reconstruction_vs_photo_db"] <= 100 and 0 < img["psnr_generated_vs_photo_db"] <= 100
    assert img["image_pass"] == (img["psnr_generated_vs_photo_db"] >= img["psnr_reconstruction_vs_photo_db"] - 1
                                 and img["psnr_generated_vs_reconstruction_db"] >= 25)
    assert r["caption_cer"] == img["cer"] >= 0 and r["transcript_cer"] == r["items"][1]["cer"] >= 0
    assert r["steps"] >= 1 and r["final_train_loss"] > 0

    # the same outputs from the run's checkpoint: the model's greedy answers (the bench's own; after a few
    # steps the image may be close to the reconstruction, 70 dB), and the reconstruction of the photo as
    # pretokenize sees it: the image codes that image-to-text puts in its prompt, decoded
    assert {task: len(v) for task, v in made.items()} == {"text-to-image": 1, "image-to-text": 1, "audio-to-text": 1}
    index = json.loads((out / "data" / "index.json").read_text())
    photo_file = out / "data" / next(x["file"] for x in index["images"] if x["caption"] == img["caption"])
    pipe = Pipeline.from_pretrained(out / "runs" / "unified")
    greedy = dict(temperature=0, repetition_penalty=1.0, seed=0)
    g = pipe("text-to-image", prompt=img["caption"], **greedy).samples[0].media
    assert np.array_equal(made["text-to-image"][0].media, g)
    captioned = pipe("image-to-text", image=photo_file, max_new_tokens=48, **greedy)
    codes = next(seg["image"] for seg in pipe.vocab.unpack(captioned.prompt_ids).segments if "image" in seg)
    with torch.no_grad():
        rec = to_uint8(pipe.tokenizers["image"].decode(torch.as_tensor(codes)[None]))[0]
    assert img["psnr_generated_vs_reconstruction_db"] == pytest.approx(psnr(g, rec), rel=1e-6)
    cap = captioned.samples[0].text
    assert img["generated_caption"] == made["image-to-text"][0].text == cap
    assert img["cer"] == cer(cap.strip(), img["caption"])
    speech = r["items"][1]
    hyp = pipe("audio-to-text", audio=out / "data" / speech["file"], max_new_tokens=48, **greedy).samples[0].text
    assert speech["generated_transcript"] == made["audio-to-text"][0].text == hyp
    assert speech["cer"] == cer(hyp.strip(), speech["transcript"])
    assert main(["bench", "overfit", "--out", str(out), "--pairs", "0"]) == 2  # one-line error
