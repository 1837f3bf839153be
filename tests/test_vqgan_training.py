"""Tokenizer training loop and benchmark on tiny data the test writes itself."""

import json
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.bench.image import codec_at, image_tiles
from unitok.config import from_dict
from unitok.data.media import MIN_IMAGE_SIDE, read_image
from unitok.errors import ConfigError, DataError
from unitok.tokenizers.base import load_tokenizer
from unitok.training.vqgan import TrainConfig, train


def _photo_folder(d, n=3, size=72):
    """A few real photo crops (scikit-image's bundled astronaut/coffee/chelsea), a corrupt PNG and a text file."""
    from skimage import data

    d.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate([data.astronaut(), data.coffee(), data.chelsea()][:n]):
        Image.fromarray(np.ascontiguousarray(img[100:100 + size, 120:120 + size + 8 * i])).save(d / f"img{i}.png")
    Image.fromarray(data.camera()[:40, :50]).save(d / "gray.png")  # grayscale, smaller than the crop
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (d / "notes.txt").write_text("not an image")
    return d


def _cfg(steps=6, log_every=2, warmup_steps=2, **kw):
    base = dict(modality="image", name="t", preset="debug", data=dict(crop=16, batch_size=4, min_scale=0.5),
                sample_every=3, ema_weights=0.9, optim=dict(lr=1e-3, warmup_steps=warmup_steps),
                run=dict(max_steps=steps, log_every=log_every, threads=1))
    base.update(kw)
    return from_dict(TrainConfig, base)


def _log(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_skips_corrupt_files(tmp_path):
    """(Resume is tested against an uninterrupted run in tests/test_engine.py.)"""
    torch.manual_seed(0)
    data = _photo_folder(tmp_path / "data")
    out = tmp_path / "run"
    s = train(_cfg(), data, out, progress=False)
    assert s["steps"] == 6
    assert s["skipped_files"] == 1 and "corrupt.png" in s["skipped"][0][0]
    log = _log(out)
    assert all(np.isfinite(r["loss"]) for r in log) and [r["step"] for r in log] == [1, 2, 4, 6]
    assert (out / "samples" / "step0000003.png").is_file() and (out / "checkpoint" / "ema.safetensors").is_file()
    tok = load_tokenizer(out / "final")
    assert tok.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 8)  # f4


def test_gan_and_loss_decreases(tmp_path):
    torch.manual_seed(0)
    data = _photo_folder(tmp_path / "data")
    s = train(_cfg(steps=4, loss=dict(gan=0.5, gan_start=2, disc_ndf=16, disc_layers=2)), data, tmp_path / "g",
              progress=False)
    assert np.isfinite(s["last"]["d_loss"]) and np.isfinite(s["last"]["g_loss"])
    s = train(_cfg(steps=30, warmup_steps=5, log_every=5, sample_every=0, ema_weights=0.0,
                   data=dict(crop=16, batch_size=8, min_scale=1.0, flip=False)), data, tmp_path / "l", progress=False)
    log = _log(tmp_path / "l")
    first, last = log[0]["rec"], np.mean([r["rec"] for r in log[-2:]])
    assert last < 0.7 * first, f"reconstruction loss did not drop by 30%: {first:.3f} -> {last:.3f}"


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        from_dict(TrainConfig, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="model: unknown config key 'chh'"):
        train(_cfg(model={"chh": 3}), tmp_path, tmp_path / "o")
    with pytest.raises(ConfigError, match="dead_code_threshold"):
        train(_cfg(model={"quantizer": {"dead_code_threshold": 10.0}}), tmp_path, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        train(_cfg(), tmp_path / "empty", tmp_path / "o")
    with pytest.raises(ConfigError, match="perceptual_weights"):
        train(_cfg(loss=dict(perceptual=1.0)), _photo_folder(tmp_path / "d"), tmp_path / "o")


def test_bench_reports_codecs_and_skips_bad_files(tmp_path):
    from unitok.apps.bench_image import run
    from unitok.tokenizers.image import ImageTokenizer, image_preset

    d = tmp_path / "held"
    d.mkdir()
    from skimage import data

    Image.fromarray(data.astronaut()[:256, :300]).save(d / "a.png")
    Image.fromarray(data.camera()[:200, :260]).save(d / "small_gray.png")  # resized up to 256
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (d / "readme.md").write_text("x")
    torch.manual_seed(0)
    tok = ImageTokenizer(image_preset("debug")).eval()
    js = tmp_path / "b.json"
    assert run(Namespace(data=str(d), json=str(js), out=None, max_files=None), tok) == 0
    assert torch.is_grad_enabled()  # no gradients inside the benchmark, none switched off for its caller
    r = json.loads(js.read_text())
    for k in ("ours", "jpeg", "webp"):
        assert {"psnr", "ssim", "bpp"} <= set(r[k])
    assert {"codebook_usage", "perplexity", "tokens_per_image", "encode_images_per_s"} <= set(r["ours"])
    assert r["images"] == 2 and r["ours"]["tokens_per_image"] == 64 * 64
    assert r["ours"]["bpp"] == pytest.approx(4096 * 6 / 65536)
    assert {s["file"].split("/")[-1] for s in r["skipped"]} == {"broken.jpg", "readme.md"}
    assert abs(r["jpeg"]["bpp"] - 0.375) < 0.2 and r["webp"]["psnr"] > 15
    # the LM's currency and the classical baselines that reach any rate (downscaled JPEG/WebP)
    assert r["ours"]["bits_per_token"] == 6 and 0 < r["ours"]["ms_ssim"] <= 1
    names = {c["name"] for c in r["classical"]}
    assert names == {f"{c}{s}" for c in ("jpeg", "webp") for s in ("", "@1/2", "@1/4", "@1/8")}
    best = r["classical_best"]
    assert best["bpp"] <= r["ours"]["bpp"] * 1.0001 and best["psnr"] == max(
        c["psnr"] for c in r["classical"] if c["bpp"] <= r["ours"]["bpp"] * 1.0001)
    # each candidate is its codec's highest quality at or below our rate (or its lowest, if none is),
    # measured here on the benchmark's tiles
    tiles = [t for f in ("a.png", "small_gray.png") for t in image_tiles(read_image(d / f, MIN_IMAGE_SIDE))]
    for c in r["classical"]:
        codec, scale = c["name"].split("@1/")[0], c.get("downscale", 1)
        lo, hi = (1, 95) if codec == "jpeg" else (0, 100)

        def bpp(q):
            return codec_at(tiles, codec, q, metrics=False, scale=scale)["bpp"]

        if bpp(lo) > r["ours"]["bpp"]:
            assert c["quality"] == lo, c
        else:
            assert c["bpp"] <= r["ours"]["bpp"] and (c["quality"] == hi or bpp(c["quality"] + 1) > r["ours"]["bpp"]), c
    assert next(c for c in r["classical"] if c["name"] == "jpeg@1/8")["bpp"] < r["jpeg"]["bpp"]
    for f in ("table.md", "grid.png", "rd.png"):
        assert (tmp_path / f).is_file()


def test_perceptual_loss_from_local_file_only(tmp_path):
    from safetensors.torch import save_file

    from unitok.perceptual import Perceptual, load_perceptual

    torch.manual_seed(0)
    ref = Perceptual()
    state = {f"features.{k}": v for k, v in ref.features.state_dict().items()}  # torchvision VGG16 layout
    state["lin0.model.1.weight"] = torch.rand(1, 64, 1, 1)
    save_file(state, str(tmp_path / "vgg.safetensors"))
    m = load_perceptual(str(tmp_path / "vgg.safetensors"))
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = m(a, b)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    assert m(a, a).abs().max() < 1e-6
    with pytest.raises(ConfigError, match="never downloaded"):
        load_perceptual(str(tmp_path / "missing.pth"))


def test_color_augmentation(tmp_path):
    import random

    from unitok.data.crops import _color

    x = torch.rand(3, 8, 8) * 2 - 1
    assert torch.equal(_color(x, 0.0, random.Random(0)), x)
    outs = [_color(x, 1.0, random.Random(s)) for s in range(30)]
    grey = [torch.equal(o[0], o[1]) and torch.equal(o[1], o[2]) for o in outs]
    assert 0 < sum(grey) < 30
    for o, g in zip(outs, grey):  # every output is grey or a channel permutation of x
        assert g or sorted(o.sum((1, 2)).tolist()) == pytest.approx(sorted(x.sum((1, 2)).tolist()))


def test_quantizer_warmup_bypasses_then_initialises_codebook(tmp_path):
    """quant_warmup: the first part of the run skips the quantizer (no usage logged, codebook
    untouched); afterwards the k-means codebook initialises on trained latents and is used."""
    torch.manual_seed(0)
    data = _photo_folder(tmp_path / "data")
    train(_cfg(steps=8, log_every=1, quant_warmup=0.5), data, tmp_path / "w", progress=False)
    log = _log(tmp_path / "w")
    assert [r["usage"] is None for r in log] == [True] * 4 + [False] * 4
    assert all(r["aux"] == 0.0 for r in log[:4]) and log[-1]["usage"] > 0
    tok = load_tokenizer(tmp_path / "w" / "final")
    assert not tok.quantize.bypass
    codes = tok.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert codes.unique().numel() > 1  # a fitted codebook, not one code
    with pytest.raises(ConfigError, match="quant_warmup"):
        train(_cfg(quant_warmup=1.0), data, tmp_path / "bad")
