"""The engine's promises, for each of the three trainers: a run killed with SIGKILL after a
checkpoint and resumed ends with the same weights, EMA, codebooks, discriminator, optimizer state and
losses as an uninterrupted run (torch.equal, fp32 on CPU); two gloo processes under torchrun match
one process with the same global batch; NaN steps are skipped; the import layering holds."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_engine_curves import TINY_AUDIO, audio_data, image_data, text_data
from unitok.checkpoint import read_optimizers, read_weights

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "train" / "debug.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

# Tiny recipes that pass every phase switch of their trainer within 10 steps.
VQGAN = """modality: image
name: t
preset: debug
data: {crop: 16, batch_size: 4, min_scale: 0.5}
quant_warmup: 0.3   # autoencoder until step 3, then k-means codebooks
ema_weights: 0.9
sample_every: 0
loss: {gan: 0.5, gan_start: 4, disc_ndf: 16, disc_layers: 2}
optim: {lr: 1.0e-3, warmup_steps: 2}
run: {max_steps: 10, log_every: 1, ckpt_every: 5, threads: 1}
"""
ENCODEC = {
    "modality": "audio", "name": "a", "model": TINY_AUDIO, "data": {"batch_size": 2, "segment_s": 0.25},
    "loss": {"disc_start": 0.3, "mel_n_ffts": [128, 256], "mel_bands": 32, "disc_n_ffts": [256, 128],
             "disc_filters": 4},
    "refit_at": 0.6, "refit_batches": 2, "calibration_batches": 2,  # refit at step 6, then decoder only
    "optim": {"lr": 3e-4, "warmup_steps": 2}, "run": {"max_steps": 10, "log_every": 1, "ckpt_every": 5, "threads": 1}}


def _setups(tmp):
    """(name, argv after `unitok`, run overrides) for the three trainers, data written into tmp."""
    (tmp / "vq.yaml").write_text(VQGAN)
    (tmp / "au.yaml").write_text(json.dumps(ENCODEC))  # JSON is YAML
    return {
        "lm": ["lm", "train", str(DEBUG), "run.max_steps=10", "run.ckpt_every=5", "run.log_every=1", "eval_every=4",
               "--data", str(text_data(tmp))],
        "vqgan": ["tokenizer", "train", str(tmp / "vq.yaml"), "--data", str(image_data(tmp / "img"))],
        "encodec": ["tokenizer", "train", str(tmp / "au.yaml"), "--data", str(audio_data(tmp / "au"))],
    }


def _run(argv, out, env=None, torchrun=0):
    pre = [sys.executable, "-m", "unitok.cli"]
    if torchrun:
        pre = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
               f"--master_port={_free_port()}", "-m", "unitok.cli"]
    return subprocess.run(pre + argv + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**ENV, **(env or {})})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out):
    recs = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r and not r.get("skipped")}


def _flatten(x, prefix: str = "", out: dict | None = None) -> dict:
    """Every tensor in nested dicts / lists, keyed by its path."""
    out = {} if out is None else out
    if isinstance(x, torch.Tensor):
        out[prefix] = x
    elif isinstance(x, dict):
        for k, v in x.items():
            _flatten(v, f"{prefix}/{k}", out)
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _flatten(v, f"{prefix}/{i}", out)
    return out


def _tensors(out):
    ck = Path(out) / "checkpoint"
    t = {f"{f.stem}/{k}": v for f in sorted(ck.glob("*.safetensors")) for k, v in read_weights(ck, f.stem).items()}
    return _flatten(read_optimizers(ck), "optimizer", t)


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    return tmp, _setups(tmp)


@pytest.mark.parametrize("name,kill_at", [("lm", 5), ("vqgan", 5), ("encodec", 5)])
def test_kill_and_resume_equals_uninterrupted(setups, name, kill_at):
    tmp, s = setups
    full, cut = tmp / f"{name}-full", tmp / f"{name}-cut"
    r = _run(s[name], full)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(s[name], cut, env={"UNITOK_KILL_AFTER_CHECKPOINT": str(kill_at)})
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])
    assert json.loads((cut / "checkpoint" / "state.json").read_text())["step"] == kill_at
    r = _run(s[name] + ["--resume"], cut)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    a, b = _tensors(full), _tensors(cut)
    assert a.keys() == b.keys()
    modules = {k.split("/")[0] for k in a}
    assert {"model", "optimizer"} <= modules and ({"ema", "disc"} <= modules if name == "vqgan" else True)
    if name == "vqgan":
        assert any("codebook" in k or "embed" in k for k in a)  # the EMA codebooks are compared too
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} of {len(a)} tensors differ, e.g. {diff[:3]}"
    assert _losses(full) == _losses(cut)
    assert len(_losses(full)) == 10


# Two ranks x half the batch vs one process x the whole batch (the same recipe: batch sizes are global).
# Gradients, the logged loss, the discriminators' gradients and taming's adaptive GAN weight are averaged
# over ranks, so the text LM agrees to float rounding (measured 1.3e-7). What still sees per-rank data,
# with the tolerance it needs (measured in docs/training.md): VQ-GAN: vector-quantize-pytorch's k-means
# init samples its points per rank, and the PatchGAN's BatchNorm normalises each rank's half batch
# (measured 0.128 at step 9, after the GAN multiplies small differences by its adaptive weight);
# EnCodec: the latent BatchNorm normalises each rank's half batch (measured 0.048).
DDP_RTOL = {"lm": 1e-5, "lm-fsdp2": 1e-5, "vqgan": 0.2, "encodec": 0.08}


@pytest.mark.parametrize("name", ["lm", "lm-fsdp2", "vqgan", "encodec"])
def test_two_ranks_match_one_process(setups, name):
    tmp, s = setups
    one, two = tmp / f"{name}-one", tmp / f"{name}-two"
    argv = s[name.split("-")[0]]
    r = _run(argv, one)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(argv + (["run.parallel=fsdp2"] if name.endswith("fsdp2") else []), two, torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    la, lb = _losses(one), _losses(two)
    assert la.keys() == lb.keys() and len(la) == 10
    steps = sorted(la)
    rel = np.abs(np.array([la[k] for k in steps]) - np.array([lb[k] for k in steps])) / np.abs([la[k] for k in steps])
    print(f"{name}: max relative loss difference 1 vs 2 ranks {rel.max():.2e} (steps {steps[0]}-{steps[-1]})")
    assert rel.max() <= DDP_RTOL[name], (name, rel.max())
    st = json.loads((two / "checkpoint" / "state.json").read_text())
    assert st["world_size"] == 2 and len(st["ranks"]) == 2
    if name.endswith("fsdp2"):  # sharded: one DCP file per rank, no full weights in the run
        assert sorted(p.name for p in (two / "checkpoint" / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not (two / "checkpoint" / "model.safetensors").exists()


def _dcp_tensors(out, tmp):
    """Every tensor of a sharded checkpoint (model and optimizer), consolidated in one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    f = tmp / f"{Path(out).name}.pt"
    dcp_to_torch_save(str(Path(out) / "checkpoint" / "dcp"), str(f))
    return _flatten(torch.load(f, weights_only=True))


def test_fsdp2_kill_resume_and_export(setups, tmp_path):
    """FSDP2 on 2 gloo ranks: SIGKILL after the sharded checkpoint at step 5, resume, and every model and
    optimizer tensor equals the uninterrupted sharded run's; export consolidates for load_model."""
    from unitok.checkpoint import load_model
    from unitok.cli import main

    tmp, s = setups
    argv = s["lm"] + ["run.parallel=fsdp2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = _run(argv, full, torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(argv, cut, torchrun=2, env={"UNITOK_KILL_AFTER_CHECKPOINT": "5"})
    assert r.returncode != 0 and (cut / "checkpoint" / "state.json").exists(), r.stderr[-3000:]
    assert json.loads((cut / "checkpoint" / "state.json").read_text())["step"] == 5
    r = _run(argv + ["--resume"], cut, torchrun=2)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    a, b = _dcp_tensors(full, tmp_path), _dcp_tensors(cut, tmp_path)
    assert a.keys() == b.keys() and any(k.startswith("/optim/state") for k in a)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} of {len(a)} tensors differ, e.g. {diff[:3]}"
    assert _losses(full) == _losses(cut)
    assert main(["checkpoint", "export", str(full), "--out", str(tmp_path / "exported")]) == 0
    exported, direct = load_model(tmp_path / "exported"), load_model(full)  # direct: consolidated on the fly
    for k, v in exported.model.state_dict().items():
        assert torch.equal(v, a[f"/model/{k}"]) and torch.equal(v, direct.model.state_dict()[k]), k


def test_an_error_on_the_main_rank_reaches_every_rank(setups, tmp_path):
    """The text tokenizer is trained on rank 0 only (two ranks once raced on its training file); when
    that fails, every rank stops with the same one-line error instead of waiting for the tokenizer."""
    tmp, s = setups
    r = _run(s["lm"] + ["text_vocab_size=60000"], tmp_path / "run", torchrun=2)
    errors = [line for line in r.stderr.splitlines() if line.startswith("unitok: error:")]
    assert r.returncode != 0 and len(errors) == 2 and len(set(errors)) == 1, r.stderr[-3000:]
    assert "Vocabulary size too high" in errors[0] and "unitok/cli.py" not in r.stderr  # torchrun's trace only


def test_nan_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    from unitok.config import load_config
    from unitok.training import lm
    from unitok.training.lm import TrainConfig, train_text_lm
    from unitok.training.loop import TrainingDiverged

    calls = {"n": 0}
    real = lm.TextLMTask.forward_backward

    def poisoned(self, scale):  # steps 3 and 4 see a NaN loss; from step 7 on every loss is NaN
        calls["n"] += 1
        m = real(self, scale)
        if calls["n"] in (3, 4) or calls["n"] >= 7:
            for p in self.model.parameters():
                p.grad = None
            m["loss"] = float("nan")
        return m

    monkeypatch.setattr(lm.TextLMTask, "forward_backward", poisoned)
    cfg = load_config(TrainConfig, DEBUG, ["run.max_steps=20", "run.max_bad_steps=3", "run.log_every=1", "eval_every=0"])
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        train_text_lm(cfg, text_data(tmp_path), tmp_path / "run", progress=False)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]  # two skipped draws did not count as steps


def test_import_layering():
    """Nothing below the trainers imports unitok.training (checked on the source, every module)."""
    import ast

    low = ["generation", "bench", "model", "tokenizers", "data", "kernels"]
    files = [f for d in low for f in (ROOT / "unitok" / d).rglob("*.py")]
    files += [ROOT / "unitok" / n for n in ("vocab.py", "checkpoint.py", "metrics.py", "config.py", "perceptual.py",
                                            "foreign.py")]
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.startswith("unitok.training")]
    assert not bad, bad
    assert len(files) > 20


def test_export_and_convert(setups, tmp_path):
    """export: the inference part of a run loads with load_model (EMA weights for a tokenizer run);
    an old-layout text-LM run is refused with the convert command named, and converts."""
    import shutil

    from safetensors.torch import load_file

    from unitok.checkpoint import load_model
    from unitok.cli import main
    from unitok.errors import CheckpointError
    from unitok.tokenizers.base import load_tokenizer

    tmp, s = setups
    vq = tmp / "vqgan-full"
    if not (vq / "checkpoint").is_dir():
        assert _run(s["vqgan"], vq).returncode == 0
    assert main(["checkpoint", "export", str(vq), "--out", str(tmp_path / "vq-export")]) == 0
    exported = load_model(tmp_path / "vq-export")
    final = load_tokenizer(vq / "final")  # save_pretrained of the EMA weights
    assert exported.kind == "tokenizer" and sorted(p.name for p in (tmp_path / "vq-export").iterdir()) == \
        ["model.json", "model.safetensors", "state.json"]
    for (k, a), b in zip(exported.model.state_dict().items(), final.state_dict().values()):
        assert torch.equal(a, b), k

    lm = tmp / "lm-full"
    if not (lm / "checkpoint").is_dir():
        assert _run(s["lm"], lm).returncode == 0
    # an old-layout run: checkpoint/state.json (with the training config), weights, vocab, tokenizer/
    old = tmp_path / "old" / "checkpoint"
    old.mkdir(parents=True)
    shutil.copy(lm / "checkpoint" / "model.safetensors", old)
    shutil.copy(lm / "checkpoint" / "vocab.json", old)
    shutil.copytree(lm / "checkpoint" / "tokenizers" / "text", old / "tokenizer")
    model_cfg = json.loads((lm / "checkpoint" / "model.json").read_text())["config"]
    (old / "state.json").write_text(json.dumps({"format": "unitok-lm-checkpoint/1", "step": 10,
                                                "config": {"model": model_cfg}}))
    with pytest.raises(CheckpointError, match="unitok checkpoint convert"):
        load_model(tmp_path / "old")
    assert main(["checkpoint", "convert", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    new = load_model(tmp_path / "new")
    want = load_file(str(lm / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(v, want[k]) for k, v in new.model.state_dict().items())
    assert new.vocab.size == new.model.cfg.vocab_size and set(new.tokenizers) == {"text"}


def test_progress_is_plain_lines_in_a_log_and_counts_the_time_budget(monkeypatch, capsys):
    """Not a terminal: one plain line per interval, no carriage returns; a time-budgeted run's
    progress is its share of the budget, not of the step cap."""
    from types import SimpleNamespace

    from unitok.training import loop

    run = loop.RunConfig(max_steps=100_000, max_minutes=10.0, log_every=1)
    eng = SimpleNamespace(run=run, step=0, elapsed=0.0, name="t")
    eng.progress = lambda: loop.Engine.progress(eng)
    monkeypatch.setattr(loop, "_is_tty", lambda: False)
    bar = loop.Progress(eng, enabled=True, every_s=0.0)
    assert bar.bar is None
    for i in range(1, 4):
        eng.step, eng.elapsed = i, 60.0 * i
        bar.update({"loss": 1.5})
    out = capsys.readouterr().out
    assert "\r" not in out and out.count("\n") == 3
    assert "step 3 (30%, 3.0 min) loss=1.5" in out  # 3 of 10 minutes, not 3 of 100,000 steps


def test_resume_of_a_missing_run_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "unitok.cli", "lm", "train", str(DEBUG), "--data", str(DEBUG),
                        "--out", str(tmp_path / "nothing"), "--resume"], cwd=ROOT, capture_output=True, text=True,
                       env=ENV)
    assert r.returncode == 2 and r.stderr.startswith("unitok: error: --resume: no checkpoint in")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
