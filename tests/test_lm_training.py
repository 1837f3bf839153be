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
from unitok.training.lm import TrainConfig, Trainer, load_checkpoint, lr_at, prepare, score_tokens

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
    assert load_config(TrainConfig, DEBUG, ["lr=1.0e-3"]).lr == 1e-3


def test_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1) and lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55) and lr_at(cfg, 99, 1.0) == pytest.approx(0.1)
    assert lr_at(cfg, 99, 7.0) == pytest.approx(0.1)


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


def _trainer(cfg, d, out):
    return Trainer(cfg, d["train_ids"], d["eval_ids"], d["vocab"], d["tokenizer"], out, eval_chars=d["eval_chars"],
                   progress=False)


def test_resume_is_bitwise_identical(text_file, tmp_path):
    cfg = load_config(TrainConfig, DEBUG, ["max_steps=16", "ckpt_every=0", "eval_every=8", "model.dropout=0.1"])
    d = prepare(cfg, text_file, None, tmp_path / "a")
    a = _trainer(cfg, d, tmp_path / "a")
    a.fit()
    b = _trainer(cfg, d, tmp_path / "b")
    b.fit(until=7)
    b.save()
    ck = load_checkpoint(tmp_path / "b", vocab=d["vocab"], optimizer=True)
    c = _trainer(cfg, d, tmp_path / "b")
    c.resume(ck)
    assert c.step == 7
    c.fit()
    for (k, va), vc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(va, vc), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time_s", "tok_per_s")} for r in h]
    assert strip(a.history) == strip(c.history)
    assert a.history[-1]["step"] == 16 and "eval_loss" in a.history[-1]


def test_load_checkpoint_errors(text_file, tmp_path):
    cfg = load_config(TrainConfig, DEBUG, ["max_steps=2", "ckpt_every=0", "eval_every=0"])
    d = prepare(cfg, text_file, None, tmp_path)
    t = _trainer(cfg, d, tmp_path / "run")
    t.fit()
    t.save()
    load_checkpoint(tmp_path / "run", vocab=d["vocab"])
    cfg2 = load_config(TrainConfig, DEBUG, ["text_vocab_size=450"])
    other = prepare(cfg2, text_file, None, tmp_path)["vocab"]
    with pytest.raises(VocabMismatchError, match="different vocabulary"):
        load_checkpoint(tmp_path / "run", vocab=other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "run" / "checkpoint" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "run")


def test_checkpoint_trained_with_triton_kernels_loads_with_auto_backends(text_file, tmp_path):
    cfg = load_config(TrainConfig, DEBUG, ["max_steps=1", "ckpt_every=0", "eval_every=0", "model.n_head=2"])
    t = _trainer(cfg, prepare(cfg, text_file, None, tmp_path), tmp_path / "run")
    t.fit()
    t.save()
    state = tmp_path / "run" / "checkpoint" / "state.json"  # as if trained on a GPU with the fused kernels
    st = json.loads(state.read_text())
    st["config"]["model"].update(attention="triton", norm_backend="triton", ce_backend="triton")
    state.write_text(json.dumps(st))
    m = load_checkpoint(tmp_path / "run")["model"]
    assert (m.cfg.attention, m.cfg.norm_backend, m.cfg.ce_backend) == ("auto", "auto", "auto")
    assert m.blocks[0].attn_norm.backend == "auto"
    assert load_checkpoint(tmp_path / "run", optimizer=True)["model"].cfg.attention == "triton"  # resume: as saved


def test_cli_train_sample_resume_and_errors(text_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = cli("lm", "train", DEBUG, "max_steps=30", "--data", text_file, "--out", a)
    assert r.returncode == 0, r.stderr
    assert "nats/char" in r.stdout
    for f in ("model.safetensors", "optimizer.pt", "state.json", "vocab.json", "tokenizer/spm.model"):
        assert (a / "checkpoint" / f).is_file(), f
    hist = json.loads((a / "losses.json").read_text())
    assert hist[-1]["step"] == 30 and hist[-1]["eval_loss"] < hist[0]["loss"]
    assert (a / "losses.csv").read_text().startswith("step,tokens,")

    r = cli("lm", "sample", a, "--prompt", "The ", "--max-new-tokens", "20", "--top-k", "20", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The ") and len(r.stdout) > 10

    # continuing with more steps
    r = cli("lm", "train", DEBUG, "max_steps=40", "--data", text_file, "--out", a, "--resume")
    assert r.returncode == 0 and "resumed" in r.stdout and "step 40" in r.stdout, r.stderr
    # training into a run dir that holds a checkpoint without --resume is refused
    r = cli("lm", "train", DEBUG, "--data", text_file, "--out", a)
    assert r.returncode == 2 and "--resume" in r.stderr

    # a different text vocabulary is a one-line error, whether by config or a swapped tokenizer
    r = cli("lm", "train", DEBUG, "text_vocab_size=450", "max_steps=50", "--data", text_file, "--out", a, "--resume")
    assert r.returncode == 2 and "VocabMismatch" not in r.stderr and "text_vocab_size" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    r = cli("lm", "train", DEBUG, "text_vocab_size=450", "max_steps=2", "--data", text_file, "--out", b)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(a / "checkpoint" / "tokenizer")
    shutil.copytree(b / "checkpoint" / "tokenizer", a / "checkpoint" / "tokenizer")
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
