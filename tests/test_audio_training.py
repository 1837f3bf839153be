"""EnCodec training (one step, resume, a loss that goes down) and the audio benchmark."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from unitok.cli import main
from unitok.config import from_dict
from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from unitok.tokenizers.base import load_tokenizer
from unitok.training.encodec import EncodecRecipe, train

TINY_MODEL = {"num_filters": 4, "upsampling_ratios": [4, 4, 4], "hidden_size": 16, "num_lstm_layers": 1,
              "codebook_size": 64, "levels": 4, "kmeans_init": False}


def _write_folder(d, silent=True, corrupt=True):
    d.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    speechy = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(16000))
    sf.write(d / "a.wav", speechy.astype(np.float32), 16000)
    t2 = np.arange(44100) / 44100  # other rate, stereo, FLAC: converted, not rejected
    sf.write(d / "b.flac", np.stack([0.2 * np.sin(2 * np.pi * 330 * t2), 0.1 * np.sin(2 * np.pi * 660 * t2)], 1), 44100)
    if silent:
        sf.write(d / "quiet.wav", np.zeros(8000, np.float32), 16000)
    if corrupt:
        (d / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    return d


def _recipe(steps=2, disc=True, lr=3e-4, log_every=1, batch_size=2, refit_at=None, refit_batches=48):
    return from_dict(EncodecRecipe, {
        "model": TINY_MODEL, "data": {"batch_size": batch_size, "segment_s": 0.25},
        "loss": {"disc": disc, "disc_start": 0.0, "mel_n_ffts": [128, 256], "mel_bands": 32, "disc_n_ffts": [256, 128],
                 "disc_filters": 4},
        "refit_at": refit_at, "refit_batches": refit_batches, "calibration_batches": 2,
        "optim": {"lr": lr, "warmup_steps": 1}, "run": {"max_steps": steps, "log_every": log_every, "ckpt_every": 100}})


def _log(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_one_step_train_skips_bad_files_and_resumes(tmp_path):
    data = _write_folder(tmp_path / "data")
    summary = train(_recipe(), data, tmp_path / "out", progress_bar=False)
    assert summary["steps"] == 2
    assert summary["skipped_unreadable"] == 1 and summary["skipped_silent"] == 1
    assert "broken.wav" in summary["skipped"] and summary["skipped"]["quiet.wav"] == "silent"
    tok = load_tokenizer(tmp_path / "out" / "final")
    assert isinstance(tok, AudioTokenizer)
    assert tok.encode(torch.randn(1, 1, 640) * 0.1).shape == (1, 4, 10)
    log = _log(tmp_path / "out")
    assert {"mel", "sisnr", "l1", "adv", "feat", "d"} <= set(log[-1])  # discriminator active from the start
    # a second run into the same folder needs --resume; with it, it continues from step 2
    from unitok.errors import CheckpointError

    with pytest.raises(CheckpointError, match="--resume"):
        train(_recipe(), data, tmp_path / "out", progress_bar=False)
    assert train(_recipe(steps=3), data, tmp_path / "out", resume=True, progress_bar=False)["steps"] == 3


def test_resume_refuses_a_different_recipe(tmp_path):
    """(Resume is tested against an uninterrupted run in tests/test_engine.py.)"""
    data = _write_folder(tmp_path / "data", silent=False, corrupt=False)
    train(_recipe(disc=False), data, tmp_path / "out", progress_bar=False)
    from unitok.errors import CheckpointError

    with pytest.raises(CheckpointError, match="different recipe.*loss.disc: False -> True"):
        train(_recipe(disc=True, steps=5), data, tmp_path / "out", resume=True, progress_bar=False)
    assert train(_recipe(disc=True, steps=3), data, tmp_path / "out", resume=True, allow_recipe_change=True,
                 progress_bar=False)["steps"] == 3


def test_training_reduces_the_reconstruction_loss(tmp_path):
    data = _write_folder(tmp_path / "data", silent=False, corrupt=False)
    torch.manual_seed(0)
    train(_recipe(steps=40, disc=False, lr=3e-3, log_every=1, batch_size=4), data, tmp_path / "out", progress_bar=False)
    log = _log(tmp_path / "out")
    first = np.mean([r["mel"] for r in log[:5]])
    last = np.mean([r["mel"] for r in log[-5:]])
    assert last < 0.75 * first, (first, last)
    assert np.mean([r["sisnr"] for r in log[-5:]]) < np.mean([r["sisnr"] for r in log[:5]])  # -SI-SNR went down


def test_codebook_refit_then_decoder_only_phase(tmp_path, capsys):
    data = _write_folder(tmp_path / "data", silent=False, corrupt=False)
    train(_recipe(steps=4, disc=False, refit_at=0.5, refit_batches=4), data, tmp_path / "out", progress_bar=False)
    out = capsys.readouterr().out
    assert "refit codebooks" in out and "training the decoder only" in out
    log = _log(tmp_path / "out")
    assert log[-1]["commit"] == 0.0  # frozen codebooks: no commitment term
    tok = load_tokenizer(tmp_path / "out" / "final")
    # k-means refit on 4 batches x 2 x 63 frames: every level uses most of its 64 codes on the fit data
    usage = [float(u) for u in out.split("usage on the fit data per level: ")[1].split(")")[0].replace("%", "").split(", ")]
    assert len(usage) == 4 and min(usage) >= 80
    assert tok.encode(torch.randn(1, 1, 640) * 0.1).shape == (1, 4, 10)


def test_dead_code_threshold_is_checked_for_audio_too(tmp_path):
    """The guard the image trainer had: a threshold above the mean hits per code and step would
    replace every code every step (2 x 62 frames over 64 codes: about 1.9 hits)."""
    from unitok.errors import ConfigError

    data = _write_folder(tmp_path / "data", silent=False, corrupt=False)
    r = _recipe()
    r.model.dead_code_threshold = 1.5
    with pytest.raises(ConfigError, match="dead_code_threshold 1.5 is not well below.*124 tokens / 64 codes"):
        train(r, data, tmp_path / "out", progress_bar=False)


def test_cli_train_unknown_key_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("modality: audio\nmodel:\n  num_filterz: 4\n")
    assert main(["tokenizer", "train", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "num_filterz" in err and "num_filters" in err and "Traceback" not in err


def test_bench_writes_json_table_and_spectrograms(tmp_path, capsys):
    data = _write_folder(tmp_path / "data", silent=False)
    torch.manual_seed(0)
    AudioTokenizer(AudioTokenizerConfig.tiny()).eval().save_pretrained(tmp_path / "tok")
    rc = main(["tokenizer", "bench", str(tmp_path / "tok"), "--data", str(data), "--json", str(tmp_path / "r" / "b.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r" / "b.json").read_text())
    assert "broken.wav" in r["skipped"] and "broken.wav" in capsys.readouterr().out
    ours, opus = r["ours"], r["opus"]
    assert ours["kbps"] == 6.0 and math.isclose(ours["frame_rate"], 250.0)
    assert set(ours["per_file"]) == {"a.wav", "b.flac"}
    for entry in (ours, opus):
        assert {"kbps", "si_snr", "mel_distance", "per_file"} <= set(entry)
        for v in entry["per_file"].values():
            assert {"si_snr", "mel_distance"} <= set(v)
    assert len(ours["codebook_usage"]) == 4 and all(0 < u <= 1 for u in ours["codebook_usage"])
    assert {"encode", "decode"} == set(ours["real_time_factor"])
    # Opus at 6 kbps on a clean tone is a real codec: positive SI-SNR after alignment
    assert opus.get("missing") is None and opus["per_file"]["a.wav"]["si_snr"] > 0
    assert abs(opus["per_file"]["a.wav"]["lag_samples"]) <= 160
    assert (tmp_path / "r" / "bench.md").read_text().count("|") > 20
    # the LM's currency, Codec2 at the highest rate <= ours, STOI, and the best classical codec
    assert ours["tokens_per_second"] == 1000 and ours["bits_per_token"] == 6
    c2 = r["codec2"]
    assert "missing" not in c2 and c2["kbps"] == 3.2 and set(c2["per_file"]) == {"a.wav", "b.flac"}
    for e in (ours, opus, c2):
        assert -1 <= e["stoi"] <= 1 and e["mel_distance_4k"] > 0
    best = r["classical_best"]
    assert best["name"] in ("opus", "codec2") and best["kbps"] <= ours["kbps"]
    assert best["mel_distance"] == min(e["mel_distance"] for e in (opus, c2) if e["kbps"] <= ours["kbps"])
    assert opus["kbps"] == pytest.approx(opus["payload_kbps"]) and opus["requested_kbps"] == 6.0  # what it spent
    assert (tmp_path / "r" / "spectrograms" / "a.png").stat().st_size > 1000
    # no transcripts: the judge's language model, the original's transcript as the reference
    assert "language model" in r["original"]["judge"] and r["original"]["wer"] is None
    assert r["original"]["transcribed_files"] == 0 and "wer" in ours


@pytest.mark.slow
def test_shared_audio_folder_reads_and_round_trips(shared_data):
    """Every file of ../shared/data/audio (16/22.05/44.1 kHz, mono/stereo, WAV/FLAC/OGG) is converted."""
    from unitok.data.audio import AudioClips

    clips = AudioClips(shared_data / "audio", 16000, 1, progress=False)
    assert not clips.skipped and len(clips.clips) >= 10
    tok = AudioTokenizer(AudioTokenizerConfig.tiny()).eval()
    x = clips.sample(2, 16000, torch.Generator().manual_seed(0))
    assert tok.decode(tok.encode(x), length=16000).shape == (2, 1, 16000)


def test_codec2_and_band_limit_on_tiny_inputs():
    from unitok.bench.audio import band_limit, codec2_mode, codec2_roundtrip

    assert [codec2_mode(k) for k in (6.0, 3.2, 2.0, 1.25, 0.2)] == [3200, 3200, 1600, 1200, 700]
    t = torch.arange(4000) / 16000
    x = (0.3 * torch.sin(2 * math.pi * 300 * t) + 0.3 * torch.sin(2 * math.pi * 6000 * t))[None]
    y = codec2_roundtrip(x, 16000, 700)
    assert y.shape == x.shape and torch.isfinite(y).all() and y.abs().max() > 0.01
    spec = lambda z: torch.fft.rfft(z[0]).abs()  # noqa: E731
    b = spec(band_limit(x, 16000))
    hz = torch.fft.rfftfreq(4000, 1 / 16000)
    assert b[(hz > 5500) & (hz < 6500)].max() < 0.01 * spec(x)[(hz > 5500) & (hz < 6500)].max()
    assert b[(hz > 250) & (hz < 350)].max() > 0.9 * spec(x)[(hz > 250) & (hz < 350)].max()
