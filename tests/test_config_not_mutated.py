"""No trainer, benchmark or demo stage writes into a config object its caller passed: each is deep-copied
before and compared after (tiny runs). The model still gets the vocabulary's size, on its own copy."""

import copy
from argparse import Namespace
from dataclasses import replace

import numpy as np
import soundfile as sf
from PIL import Image

from test_pretokenize import corpus  # noqa: F401  (fixture)
from test_unified import DEBUG as UNIFIED_DEBUG
from test_unified import ROOT, shards  # noqa: F401  (fixture)
from unitok.config import load_config

LM_DEBUG = ROOT / "configs" / "train" / "debug.yaml"
LM_TINY = ["run.max_steps=2", "eval_every=0"]


def _text(path):
    from pydoc_data.topics import topics

    path.write_text("\n".join(topics.values())[:20000])
    return path


def _record_loaded_configs(monkeypatch, module) -> list:
    """Every config `module` loads with `load_config`, paired with a deep copy taken when it was loaded."""
    import unitok.config

    seen = []

    def load(*args, **kwargs):
        cfg = load_config(*args, **kwargs)
        seen.append((cfg, copy.deepcopy(cfg)))
        return cfg

    monkeypatch.setattr(unitok.config, "load_config", load)  # function-level imports
    monkeypatch.setattr(module, "load_config", load, raising=False)  # a module-level import
    return seen


def test_text_lm_trainer(tmp_path):
    from unitok.training.lm import TrainConfig, train_text_lm

    cfg = load_config(TrainConfig, LM_DEBUG, LM_TINY)
    before = copy.deepcopy(cfg)
    task, _ = train_text_lm(cfg, _text(tmp_path / "t.txt"), tmp_path / "run", progress=False)
    assert cfg == before
    assert task.model.cfg.vocab_size == task.vocab().size != cfg.model.vocab_size
    assert task.model_config()["vocab_size"] == task.vocab().size  # what the checkpoint records


def test_unified_trainer(shards, tmp_path):  # noqa: F811
    from unitok.training.unified import UnifiedConfig, train_unified

    cfg = load_config(UnifiedConfig, UNIFIED_DEBUG, ["run.max_steps=2"])
    before = copy.deepcopy(cfg)
    task, _ = train_unified(cfg, shards, tmp_path / "run", progress=False)
    assert cfg == before
    assert task.model.cfg.vocab_size == task.vocab().size != cfg.model.vocab_size
    assert task.model_config()["vocab_size"] == task.vocab().size


def test_text_lm_bench(monkeypatch, tmp_path):
    from unitok.apps import bench_text_lm as text_bench

    seen = _record_loaded_configs(monkeypatch, text_bench)
    args = Namespace(data=_text(tmp_path / "t.txt"), eval_data=None, json=tmp_path / "r.json", config=LM_DEBUG,
                     overrides=LM_TINY, seed=0, minutes=2.0)
    assert text_bench.run(args) == 0
    assert len(seen) == 1 and all(cfg == loaded for cfg, loaded in seen)


def test_train_bench(monkeypatch, tmp_path):
    from unitok.apps import bench_train as train_bench

    seen = _record_loaded_configs(monkeypatch, train_bench)
    args = Namespace(config=UNIFIED_DEBUG, overrides=[], data=None, steps=2, repeats=1, json=tmp_path / "b.json")
    assert train_bench.run(args) == 0
    assert len(seen) >= 1 and all(cfg == loaded for cfg, loaded in seen)


def test_demo_stages(shards, tmp_path):  # noqa: F811
    """The tiny plan's unified model, image tokenizer and audio tokenizer stages, on small inputs."""
    from skimage import data

    from unitok.apps import demo

    p = demo.plan(tiny=True)
    p.lm = replace(p.lm, run=replace(p.lm.run, max_steps=2))
    before = copy.deepcopy(p)
    lm_cfg, _ = demo._lm_config(p, shards, 60.0)
    lm_before = copy.deepcopy(lm_cfg)
    task, _ = demo._train_lm(lm_cfg, shards, tmp_path / "unified")
    assert lm_cfg == lm_before and task.model.cfg.vocab_size == task.vocab().size
    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(data, name)()[:96, :96]).save(images / f"{name}.png")
    demo.vqgan_stage(demo.with_budget(p.image, 60.0), images, tmp_path / "image-tokenizer")
    speech = tmp_path / "speech"
    speech.mkdir()
    t = np.arange(24000) / 16000
    for i, hz in enumerate((220, 330)):
        sf.write(speech / f"{i}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000)
    demo.encodec_stage(demo.with_budget(p.audio, 60.0), speech, tmp_path / "audio-tokenizer")
    assert p == before
