"""`unitok bench overfit`: the mechanics on a tiny budget (the acceptance run itself is in docs/generation.md)."""

import json

import pytest


def test_overfit_bench_writes_every_item_and_its_verdict(tmp_path):
    from unitok.cli import main
    from unitok.data.speech import Espeak, SpeechUnavailable

    try:
        Espeak()
    except SpeechUnavailable as e:
        pytest.skip(f"no eSpeak NG: {e}")
    out = tmp_path / "o"
    rc = main(["bench", "overfit", "--out", str(out), "--pairs", "1", "--minutes", "0.05",
               "--tokenizer-seconds", "2", "--batch-size", "2"])
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
    assert main(["bench", "overfit", "--out", str(out), "--pairs", "0"]) == 2  # one-line error
