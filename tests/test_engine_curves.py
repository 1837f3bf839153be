"""Behaviour kept: each trainer, run through the engine, reproduces the per-step loss curve recorded
before the engine existed (tests/assets/curves, see its README). Same seeds, one thread, the data the
recording used."""

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from unitok.config import from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "tests" / "assets" / "curves"
# The arithmetic of all three is unchanged: the curves are equal, step for step (measured: 0.0).
RTOL = {"lm": 0.0, "vqgan": 0.0, "encodec": 0.0}


def text_data(d):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "red", "house", "of", "my", "friend",
             "quickly", "under", "bright", "moon", "river"]
    lines = [" ".join(rng.choice(words, size=rng.integers(4, 12))).capitalize() + "." for _ in range(1500)]
    p = d / "text.txt"
    p.write_text("\n".join(lines))
    return p


def image_data(d):
    from skimage import data

    d.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate([data.astronaut(), data.coffee(), data.chelsea()]):
        Image.fromarray(np.ascontiguousarray(img[100:196, 120:216])).save(d / f"img{i}.png")
    return d


def audio_data(d):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for i, f0 in enumerate([220, 330]):
        x = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(16000)
        sf.write(d / f"a{i}.wav", x.astype(np.float32), 16000)
    return d


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _compare(name, got):
    want = json.loads((CURVES / f"{name}.json").read_text())["loss"]
    assert len(got) == len(want), (len(got), len(want))
    rel = np.abs(np.array(got) - np.array(want)) / np.abs(np.array(want))
    print(f"{name}: {len(got)} steps, max relative difference {rel.max():.2e}")
    assert rel.max() <= RTOL[name], f"{name}: step {int(rel.argmax()) + 1} differs by {rel.max():.2e} (> {RTOL[name]})"


def test_text_lm_curve_kept(tmp_path):
    from unitok.training.lm import TrainConfig, train_text_lm

    cfg = load_config(TrainConfig, ROOT / "configs" / "train" / "debug.yaml",
                      ["run.max_steps=60", "run.log_every=1", "eval_every=0", "run.ckpt_every=0"])
    train_text_lm(cfg, text_data(tmp_path), tmp_path / "lm", progress=False)
    _compare("lm", [r["loss"] for r in _metrics(tmp_path / "lm")])


def test_vqgan_curve_kept(tmp_path):
    """Autoencoder warm-up, k-means VQ, PatchGAN from step 20 and the EMA of the weights."""
    from unitok.training.vqgan import TrainConfig, train

    cfg = from_dict(TrainConfig, dict(
        modality="image", name="t", preset="debug", data=dict(crop=16, batch_size=4, min_scale=0.5, color_aug=0.5),
        sample_every=0, ema_weights=0.9, quant_warmup=0.25, loss=dict(gan=0.5, gan_start=20, disc_ndf=16, disc_layers=2),
        optim=dict(lr=1e-3, betas=[0.5, 0.9], warmup_steps=4), run=dict(max_steps=40, log_every=1, threads=1)))
    train(cfg, image_data(tmp_path / "img"), tmp_path / "vq", progress=False)
    _compare("vqgan", [r["loss"] for r in _metrics(tmp_path / "vq")])


TINY_AUDIO = {"num_filters": 4, "upsampling_ratios": [4, 4, 4], "hidden_size": 16, "num_lstm_layers": 1,
              "codebook_size": 64, "levels": 4, "kmeans_init": False}


def test_encodec_curve_kept(tmp_path):
    """Discriminator from 30% of the run, codebook refit at 60%, then the decoder-only phase."""
    from unitok.training.encodec import EncodecRecipe, train

    r = from_dict(EncodecRecipe, {
        "model": TINY_AUDIO, "data": {"batch_size": 2, "segment_s": 0.25},
        "loss": {"disc_start": 0.3, "mel_n_ffts": [128, 256], "mel_bands": 32, "disc_n_ffts": [256, 128],
                 "disc_filters": 4},
        "refit_at": 0.6, "refit_batches": 4, "calibration_batches": 2,
        "optim": {"lr": 3e-4, "betas": [0.5, 0.9], "warmup_steps": 3},
        "run": {"max_steps": 30, "log_every": 1, "ckpt_every": 100, "threads": 1}})
    train(r, audio_data(tmp_path / "au"), tmp_path / "en", progress_bar=False)
    _compare("encodec", [r["loss"] for r in _metrics(tmp_path / "en")])
