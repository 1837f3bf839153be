import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unitok.config import load_config
from unitok.errors import CheckpointError, VocabMismatchError
from unitok.model.config import debug
from unitok.model.transformer import UnifiedTransformer
from unitok.checkpoint import load_model
from unitok.model.scoring import score_tokens
from unitok.training.lm import TrainConfig, train_text_lm
from unitok.training.loop import OptimConfig, lr_factor

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "train" / "debug.yaml"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from pydoc_data.topics import topics

    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_text("\n".join(topics.values())[:60000])
    return p


def cli(*args):
    return subprocess.run([sys.executable, "-m", "unitok.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_configs_load():
    cfg = load_config(TrainConfig, ROOT / "configs" / "train" / "text-lm.yaml")
    assert cfg.seq_len <= cfg.model.max_seq_len
    assert load_config(TrainConfig, DEBUG, ["optim.lr=1.0e-3"]).optim.lr == 1e-3
    # a partial block keeps the trainer's defaults for the rest
    assert load_config(TrainConfig, DEBUG).optim.weight_decay == 0.1


def test_schedule_warmup_then_cosine_or_wsd_to_min():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(0.1) and lr_factor(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(0.55) and lr_factor(cfg, 99, 1.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 99, 7.0) == pytest.approx(0.1)
    wsd = OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1)
    assert lr_factor(wsd, 50, 0.5) == 1.0 and lr_factor(wsd, 50, 0.8) == 1.0
    assert lr_factor(wsd, 90, 0.9) == pytest.approx(0.55) and lr_factor(wsd, 99, 1.0) == pytest.approx(0.1)


def test_score_tokens_counts_every_target_once():
    torch.manual_seed(0)
    m = UnifiedTransformer(debug()).eval()
    ids = np.random.default_rng(0).integers(0, 512, 150)
    nll, n = score_tokens(m, ids, window=32, stride=16, batch_size=3)
    assert n == 149
    # per-token NLL of a window scored by hand: the second window (start 16) scores targets 33..48
    with torch.no_grad():
        per = m(torch.tensor(ids[None, 16:48]), torch.tensor(ids[None, 17:49]), reduction="none").view(-1)
        first = float(m(torch.tensor(ids[None, :32]), torch.tensor(ids[None, 1:33]), reduction="sum"))
    two, n2 = score_tokens(m, ids[:49], window=32, stride=16)
    assert n2 == 48 and two == pytest.approx(first + float(per[16:].sum()), rel=1e-5)
    # a sequence shorter than the window is one plain forward pass
    short = np.random.default_rng(1).integers(0, 512, 40)
    with torch.no_grad():
        ref = float(m(torch.tensor(short[None, :-1]), torch.tensor(short[None, 1:]), reduction="sum"))
    assert score_tokens(m, short, window=64)[0] == pytest.approx(ref, rel=1e-5)


def _cfg(*overrides):
    return load_config(TrainConfig, DEBUG, list(overrides))


def test_load_model_errors(text_file, tmp_path):
    train_text_lm(_cfg("run.max_steps=2", "run.ckpt_every=0", "eval_every=0"), text_file, tmp_path / "run",
                  progress=False)
    ck = load_model(tmp_path / "run")
    assert ck.kind == "transformer" and ck.vocab.size == ck.model.cfg.vocab_size and set(ck.tokenizers) == {"text"}
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")
    # a tokenizer that does not match the manifest
    train_text_lm(_cfg("run.max_steps=1", "text_vocab_size=450", "eval_every=0"), text_file, tmp_path / "other",
                  progress=False)
    tok = tmp_path / "run" / "checkpoint" / "tokenizers" / "text"
    shutil.rmtree(tok)
    shutil.copytree(tmp_path / "other" / "checkpoint" / "tokenizers" / "text", tok)
    with pytest.raises(VocabMismatchError, match="different vocabulary"):
        load_model(tmp_path / "run")
    (tmp_path / "run" / "checkpoint" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "run")


def test_checkpoint_trained_with_triton_kernels_loads_with_auto_backends(text_file, tmp_path):
    train_text_lm(_cfg("run.max_steps=1", "eval_every=0", "model.n_head=2"), text_file, tmp_path / "run",
                  progress=False)
    meta = tmp_path / "run" / "checkpoint" / "model.json"  # as if trained on a GPU with the fused kernels
    m = json.loads(meta.read_text())
    m["config"].update(attention="triton", norm_backend="triton", ce_backend="triton")
    meta.write_text(json.dumps(m))
    model = load_model(tmp_path / "run").model
    assert (model.cfg.attention, model.cfg.norm_backend, model.cfg.ce_backend) == ("auto", "auto", "auto")
    assert model.blocks[0].attn_norm.backend == "auto"


def test_cli_train_sample_resume_and_errors(text_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = cli("lm", "train", DEBUG, "run.max_steps=30", "--data", text_file, "--out", a)
    assert r.returncode == 0, r.stderr
    assert "nats/char" in r.stdout
    for f in ("model.json", "model.safetensors", "optimizer.pt", "state.json", "vocab.json",
              "tokenizers/text/spm.model"):
        assert (a / "checkpoint" / f).is_file(), f
    hist = json.loads((a / "losses.json").read_text())
    assert hist[-1]["step"] == 30 and hist[-1]["eval_loss"] < hist[0]["loss"]
    assert (a / "losses.csv").read_text().startswith("step,tokens,")

    r = cli("lm", "sample", a, "--prompt", "The ", "--max-new-tokens", "20", "--top-k", "20", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The ") and len(r.stdout) > 10

    # continuing with more steps
    r = cli("lm", "train", DEBUG, "run.max_steps=40", "--data", text_file, "--out", a, "--resume")
    assert r.returncode == 0 and "resumed" in r.stdout and "step 40" in r.stdout, r.stderr
    # training into a run dir that holds a checkpoint without --resume is refused
    r = cli("lm", "train", DEBUG, "--data", text_file, "--out", a)
    assert r.returncode == 2 and "--resume" in r.stderr

    # a different text vocabulary is a one-line error, whether by config or a swapped tokenizer
    r = cli("lm", "train", DEBUG, "text_vocab_size=450", "run.max_steps=50", "--data", text_file, "--out", a, "--resume")
    assert r.returncode == 2 and "VocabMismatch" not in r.stderr and "text_vocab_size" in r.stderr
    r = cli("lm", "train", DEBUG, "text_vocab_size=450", "run.max_steps=50", "--data", text_file, "--out", a, "--resume",
            "--allow-recipe-change")  # the recipe may change on purpose; the tokenizer still may not
    assert r.returncode == 2 and "text_vocab_size" in r.stderr and "450" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    r = cli("lm", "train", DEBUG, "text_vocab_size=450", "run.max_steps=2", "--data", text_file, "--out", b)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(a / "checkpoint" / "tokenizers" / "text")
    shutil.copytree(b / "checkpoint" / "tokenizers" / "text", a / "checkpoint" / "tokenizers" / "text")
    r = cli("lm", "sample", a)
    assert r.returncode == 2 and "different vocabulary" in r.stderr and r.stderr.strip().count("\n") == 0

    # corrupt and missing checkpoints
    (b / "checkpoint" / "model.safetensors").write_bytes(b"not a safetensors file")
    r = cli("lm", "sample", b)
    assert r.returncode == 2 and "corrupt" in r.stderr and r.stderr.strip().count("\n") == 0
    (b / "checkpoint" / "state.json").write_text("{")
    r = cli("lm", "train", DEBUG, "--data", text_file, "--out", b, "--resume")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    r = cli("lm", "sample", tmp_path / "missing")
    assert r.returncode == 2 and "not found" in r.stderr
