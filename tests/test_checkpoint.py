"""The checkpoint format (unitok/checkpoint.py) on tiny modules, and the engine's pure resume helpers
(`recipe_diff`, `lr_factor`). Fast: no training run; each test saves and loads directly."""

import argparse
import json
import math
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from unitok import checkpoint as ck
from unitok.config import to_dict
from unitok.errors import CheckpointError, VocabMismatchError
from unitok.model.config import debug
from unitok.model.transformer import UnifiedTransformer
from unitok.training.loop import RESUMABLE_KEYS, OptimConfig, lr_factor, recipe_diff
from unitok.vocab import CodebookSpec, UnifiedVocab

VOCAB = UnifiedVocab(text_size=100, codebooks=[CodebookSpec("image", 64)], max_size=16)


def _model(seed):
    torch.manual_seed(seed)
    return UnifiedTransformer(debug(vocab_size=VOCAB.size))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _save_lm(directory, *, state=None, **kw):
    """A transformer checkpoint with distinct "model" and "ema" weights (ema is the inference one)."""
    model, ema = _model(0), _model(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)).backward()
    opt.step()
    state = state if state is not None else {"step": 3, "elapsed_s": 1.5, "history": [{"step": 3, "loss": 2.0}]}
    kw = {"optimizers": {"model": opt}, "weights": "ema", "vocab": VOCAB, **kw}
    d = ck.save_checkpoint(directory, kind="transformer", config=to_dict(model.cfg),
                           modules={"model": model, "ema": ema}, state=state, **kw)
    return d, model, ema, opt


def test_save_load_roundtrip_uses_the_inference_weights(tmp_path):
    d, model, ema, opt = _save_lm(tmp_path / "run" / "checkpoint")
    assert sorted(p.name for p in d.iterdir()) == ["ema.safetensors", "model.json", "model.safetensors",
                                                   "optimizer.pt", "state.json", "vocab.json"]
    assert sorted(p.name for p in d.parent.iterdir()) == ["checkpoint"]  # no .tmp / .old left behind
    meta = json.loads((d / "model.json").read_text())
    assert meta == {"format": ck.FORMAT, "kind": "transformer", "config": to_dict(model.cfg), "weights": "ema",
                    "tokenizers": []}
    for where in (tmp_path / "run", d):  # a run directory or the checkpoint directory itself
        out = ck.load_model(where)
        assert out.path == d and out.kind == "transformer" and out.config == model.cfg
        assert not out.model.training
        assert _equal(out.model.state_dict(), ema.state_dict())  # "weights": "ema"
        assert out.state == {"step": 3, "elapsed_s": 1.5, "history": [{"step": 3, "loss": 2.0}]}
        assert out.vocab.hash == VOCAB.hash and out.tokenizers == {}
    assert _equal(ck.load_model(d, weights="model").model.state_dict(), model.state_dict())
    assert _equal(ck.read_weights(d), ck.module_state(model))
    saved = ck.read_optimizers(d)["model"]
    assert saved["param_groups"] == opt.state_dict()["param_groups"]
    assert all(_equal(saved["state"][i], s) for i, s in opt.state_dict()["state"].items())


def test_save_replaces_atomically_and_cleans_leftovers(tmp_path):
    d = tmp_path / "checkpoint"
    _save_lm(d, state={"step": 1})
    # leftovers of a crashed save: a half-written .tmp and a .old
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "junk").write_text("x")
    (tmp_path / "checkpoint.old").mkdir()
    (tmp_path / "checkpoint.old" / "junk").write_text("x")
    _save_lm(d, state={"step": 2}, optimizers=None, vocab=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert ck.read_state(d) == {"step": 2}
    assert not (d / "junk").exists() and not (d / "optimizer.pt").exists() and not (d / "vocab.json").exists()
    assert ck.load_model(d).vocab is None


def test_save_needs_model_and_weights_module(tmp_path):
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'model'"):
        ck.save_checkpoint(tmp_path / "a", kind="transformer", config={}, modules={"ema": m}, state={},
                           weights="ema")
    with pytest.raises(ValueError, match="'model'"):
        ck.save_checkpoint(tmp_path / "b", kind="transformer", config={}, modules={"model": m}, state={},
                           weights="ema")
    assert not any(tmp_path.iterdir())


def test_module_state_unwraps_and_is_contiguous_cpu():
    lin = nn.Linear(3, 2)
    lin.register_buffer("t", torch.arange(6.0).view(2, 3).t())  # not contiguous

    class Wrap(nn.Module):  # what DDP (.module) and torch.compile (._orig_mod) look like
        def __init__(self, attr, inner):
            super().__init__()
            setattr(self, attr, inner)

    for m in (lin, Wrap("module", lin), Wrap("_orig_mod", lin), Wrap("module", Wrap("_orig_mod", lin))):
        sd = ck.module_state(m)
        assert list(sd) == ["weight", "bias", "t"]
        assert all(v.is_contiguous() and v.device.type == "cpu" and not v.requires_grad for v in sd.values())
        assert torch.equal(sd["t"], lin.t)


@pytest.mark.parametrize("old", ["checkpoint/state.json", "state.json", "ckpt/last.pt", "checkpoint.pt"])
def test_resolve_names_older_layouts(tmp_path, old):
    (tmp_path / old).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / old).write_text("{}")
    with pytest.raises(CheckpointError, match="older unitok layout.*convert"):
        ck.resolve(tmp_path)


def test_resolve_and_read_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.resolve(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="not a unitok checkpoint"):
        ck.resolve(tmp_path)
    d, *_ = _save_lm(tmp_path / "c")
    assert ck.resolve(d) == d and ck.resolve(str(d)) == d
    # model.json: wrong format, no config, not an object
    meta = json.loads((d / "model.json").read_text())
    for bad in ({**meta, "format": "unitok-checkpoint/0"}, {k: v for k, v in meta.items() if k != "config"}, [1]):
        (d / "model.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="not a unitok-checkpoint/1 model.json"):
            ck.read_meta(d)
    (d / "model.json").write_text(json.dumps({**meta, "kind": "spaceship"}))
    with pytest.raises(CheckpointError, match="unknown model kind 'spaceship'"):
        ck.load_model(d)
    (d / "model.json").write_text(json.dumps({**meta, "config": {**meta["config"], "n_layers": 3}}))
    with pytest.raises(CheckpointError, match="corrupt model config"):
        ck.load_model(d)
    (d / "model.json").write_text(json.dumps({**meta, "config": {**meta["config"], "dim": 48}}))
    with pytest.raises(CheckpointError, match="do not fit the model config"):
        ck.load_model(d)
    (d / "model.json").write_text(json.dumps(meta))
    # state.json
    (d / "state.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        ck.read_state(d)
    (d / "state.json").write_text("{\"step\": ")
    with pytest.raises(CheckpointError, match="corrupt checkpoint state"):
        ck.read_state(d)
    (d / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json is missing"):
        ck.load_model(d)
    # weights and optimizer; an optimizer file is never unpickled beyond tensors and plain containers
    torch.save({"model": argparse.Namespace(lr=1.0)}, d / "optimizer.pt")
    with pytest.raises(CheckpointError, match="corrupt optimizer state"):
        ck.read_optimizers(d)
    extra = {**ck.read_weights(d, "ema"), "stray.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="do not fit the model config.*stray.weight"):
        ck.load_into(_model(0), extra, d)
    (d / "optimizer.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt optimizer state"):
        ck.read_optimizers(d)
    (d / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt is missing"):
        ck.read_optimizers(d)
    (d / "ema.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt weights"):
        ck.load_model(d)
    (d / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors is missing"):
        ck.load_model(d)


def test_triton_backends_load_as_auto(tmp_path):
    d, _, ema, _ = _save_lm(tmp_path / "c")
    meta = json.loads((d / "model.json").read_text())
    meta["config"].update(attention="triton", norm_backend="triton", ce_backend="triton")
    (d / "model.json").write_text(json.dumps(meta))
    out = ck.load_model(d)
    assert (out.config.attention, out.config.norm_backend, out.config.ce_backend) == ("auto", "auto", "auto")
    assert _equal(out.model.state_dict(), ema.state_dict())


def _tiny_image_tokenizer(seed):
    from unitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
    from unitok.tokenizers.quantizers import QuantizerConfig

    torch.manual_seed(seed)
    return ImageTokenizer(ImageTokenizerConfig(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, embed_dim=4,
                                               norm_groups=0, mid_attn=False,
                                               quantizer=QuantizerConfig(codebook_size=16, ema=False,
                                                                         kmeans_init=False)))


def test_tokenizer_checkpoint_with_tokenizers_and_vocab(tmp_path):
    from unitok.tokenizers.base import load_tokenizer

    tok, other = _tiny_image_tokenizer(0), _tiny_image_tokenizer(1)
    vocab = UnifiedVocab.from_tokenizers({"image": tok}, max_size=16)
    config = {"type": tok.type_name, **to_dict(tok.config)}
    d = ck.save_checkpoint(tmp_path / "c", kind="tokenizer", config=config, modules={"model": tok},
                           state={"step": 0}, vocab=vocab, tokenizers={"image": tok})
    out = ck.load_model(d)
    assert out.kind == "tokenizer" and type(out.model) is type(tok) and out.config == tok.config
    assert not out.model.training and _equal(out.model.state_dict(), tok.state_dict())
    assert set(out.tokenizers) == {"image"} and _equal(out.tokenizers["image"].state_dict(), tok.state_dict())
    assert out.vocab.hash == vocab.hash
    # a tokenizer given as its saved folder is copied as it is; here it is not the one of the manifest
    other.save_pretrained(tmp_path / "saved")
    d2 = ck.save_checkpoint(tmp_path / "c2", kind="tokenizer", config=config, modules={"model": tok},
                            state={"step": 0}, vocab=vocab, tokenizers={"image": tmp_path / "saved", "b": tok})
    assert json.loads((d2 / "model.json").read_text())["tokenizers"] == ["b", "image"]
    assert _equal(load_tokenizer(d2 / "tokenizers" / "image").state_dict(), other.state_dict())
    assert _equal(load_tokenizer(d2 / "tokenizers" / "b").state_dict(), tok.state_dict())
    meta = json.loads((d2 / "model.json").read_text())
    (d2 / "model.json").write_text(json.dumps({**meta, "tokenizers": ["image"]}))
    with pytest.raises(VocabMismatchError, match="weights_sha256"):
        ck.load_model(d2)
    # export keeps the tokenizers
    exp = ck.load_model(ck.export(d, tmp_path / "exp"))
    assert set(exp.tokenizers) == {"image"} and _equal(exp.tokenizers["image"].state_dict(), tok.state_dict())


def test_vocab_size_must_match_the_manifest(tmp_path):
    d, *_ = _save_lm(tmp_path / "c")
    UnifiedVocab(text_size=101, codebooks=[CodebookSpec("image", 64)], max_size=16).save(d / "vocab.json")
    with pytest.raises(VocabMismatchError, match=f"vocab_size {VOCAB.size} != manifest size {VOCAB.size + 1}"):
        ck.load_model(d)


def test_export_keeps_only_the_inference_part(tmp_path):
    d, _, ema, _ = _save_lm(tmp_path / "run" / "checkpoint")
    out = ck.export(tmp_path / "run", tmp_path / "exp" / "model")
    assert out == tmp_path / "exp" / "model"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors", "state.json", "vocab.json"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["weights"] == "model" and meta["kind"] == "transformer"
    assert ck.read_state(out) == {"step": 3, "exported_from": str(d), "history": [{"step": 3, "loss": 2.0}]}
    loaded = ck.load_model(out)
    assert _equal(loaded.model.state_dict(), ema.state_dict()) and loaded.vocab.hash == VOCAB.hash
    with pytest.raises(CheckpointError, match="not empty"):
        ck.export(d, out)
    (tmp_path / "empty").mkdir()
    assert ck.export(d, tmp_path / "empty") == tmp_path / "empty"
    assert (tmp_path / "empty" / "model.json").is_file()


def _old_layout(src, model, *, with_config=True, step=7):
    src.mkdir(parents=True)
    st = {"history": [{"step": 7}], **({"config": {"model": to_dict(model.cfg)}} if with_config else {})}
    if step is not None:
        st["step"] = step
    (src / "state.json").write_text(json.dumps(st))
    save_file(ck.module_state(model), str(src / "model.safetensors"))
    VOCAB.save(src / "vocab.json")


@pytest.mark.parametrize("nested", [False, True])
def test_convert_old_text_lm_checkpoint(tmp_path, nested):
    model = _model(2)
    _old_layout(tmp_path / "old" / "checkpoint" if nested else tmp_path / "old", model)
    with pytest.raises(CheckpointError, match="older unitok layout"):
        ck.load_model(tmp_path / "old")
    new = ck.convert(tmp_path / "old", tmp_path / "new")
    assert new == tmp_path / "new" / "checkpoint"
    out = ck.load_model(tmp_path / "new")
    assert _equal(out.model.state_dict(), model.state_dict()) and out.vocab.hash == VOCAB.hash
    src = tmp_path / "old" / "checkpoint" if nested else tmp_path / "old"
    assert out.state == {"step": 7, "converted_from": str(src), "history": [{"step": 7}]}
    assert ck.convert(tmp_path / "old", tmp_path / "x" / "checkpoint") == tmp_path / "x" / "checkpoint"


def test_convert_copies_the_tokenizer_and_defaults_the_step(tmp_path):
    _old_layout(tmp_path / "old", _model(0), step=None)
    (tmp_path / "old" / "tokenizer").mkdir()
    (tmp_path / "old" / "tokenizer" / "config.json").write_text('{"type": "text-sentencepiece"}')
    new = ck.convert(tmp_path / "old", tmp_path / "new")
    assert json.loads((new / "model.json").read_text())["tokenizers"] == ["text"]
    assert (new / "tokenizers" / "text" / "config.json").read_text() == '{"type": "text-sentencepiece"}'
    assert ck.read_state(new)["step"] == 0


def test_convert_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not an old text-LM checkpoint"):
        ck.convert(tmp_path, tmp_path / "new")
    model = _model(0)
    _old_layout(tmp_path / "a", model, with_config=False)
    with pytest.raises(CheckpointError, match="no model config"):
        ck.convert(tmp_path / "a", tmp_path / "new")
    _old_layout(tmp_path / "b", model)
    st = json.loads((tmp_path / "b" / "state.json").read_text())
    st["config"]["model"]["n_layers"] = 2
    (tmp_path / "b" / "state.json").write_text(json.dumps(st))
    with pytest.raises(CheckpointError, match="n_layers"):
        ck.convert(tmp_path / "b", tmp_path / "new")
    (tmp_path / "b" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not an old text-LM checkpoint"):
        ck.convert(tmp_path / "b", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _save_sharded(d):
    """What an FSDP2 run leaves: the ranks' torch.distributed.checkpoint shards in tmp_dir(d)/dcp, then
    the main rank's save_checkpoint(sharded=True). One process writes the shards here (no process group)."""
    import torch.distributed.checkpoint as dcp

    model = _model(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(ck.tmp_dir(d) / "dcp"), no_dist=True)
    ck.save_checkpoint(d, kind="transformer", config=to_dict(model.cfg), modules={}, state={"step": 5},
                       vocab=VOCAB, sharded=True)
    return model


def test_sharded_checkpoint_loads_and_exports_consolidated(tmp_path):
    d = tmp_path / "run" / "checkpoint"
    model = _save_sharded(d)
    assert json.loads((d / "model.json").read_text())["weights"] == "dcp"
    assert (d / "dcp").is_dir() and not (d / "model.safetensors").exists() and not ck.tmp_dir(d).exists()
    with warnings.catch_warnings(record=True) as caught:  # dcp's "load in a single process" warning is expected
        warnings.simplefilter("always")
        assert _equal(ck.load_model(tmp_path / "run").model.state_dict(), model.state_dict())
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    out = ck.export(tmp_path / "run", tmp_path / "exp")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors", "state.json", "vocab.json"]
    assert json.loads((out / "model.json").read_text())["weights"] == "model"
    assert _equal(ck.read_weights(out), model.state_dict())
    shutil.rmtree(d / "dcp")
    with pytest.raises(CheckpointError, match="dcp/ is missing"):
        ck.load_model(d)


def test_sharded_checkpoint_with_missing_shard_metadata_is_a_checkpoint_error(tmp_path):
    _save_sharded(tmp_path / "checkpoint")
    (tmp_path / "checkpoint" / "dcp" / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete sharded checkpoint, \.metadata is missing"):
        ck.load_model(tmp_path / "checkpoint")


def test_export_and_convert_cli_print_the_new_path(tmp_path, capsys):
    d, *_ = _save_lm(tmp_path / "run" / "checkpoint")
    assert ck.export_cli(argparse.Namespace(run=str(tmp_path / "run"), out=str(tmp_path / "exp"))) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'exp'}\n"
    _old_layout(tmp_path / "old", _model(0))
    assert ck.convert_cli(argparse.Namespace(old=str(tmp_path / "old"), new=str(tmp_path / "new"))) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'new' / 'checkpoint'}\n"
    assert ck.load_model(tmp_path / "new").state["step"] == 7


# ------------------------------------------------------------------ engine resume helpers (pure functions)
def test_recipe_diff_names_changed_keys_and_ignores_resumable_ones():
    a = {"run": {"max_steps": 10, "seed": 0, "compile": False}, "optim": {"lr": 1e-3, "betas": [0.9, 0.95]},
         "model": {"dim": 32}}
    assert recipe_diff(a, a) == []
    # every budget / cadence / machine key may change
    b = json.loads(json.dumps(a))
    for key in RESUMABLE_KEYS:
        sec, name = key.split(".")
        b[sec][name] = 12345
    assert recipe_diff(a, b) == []
    # tuples and lists compare by value (a recipe read back from JSON has lists)
    assert recipe_diff({"optim": {"betas": (0.9, 0.95)}}, {"optim": {"betas": [0.9, 0.95]}}) == []
    c = json.loads(json.dumps(a))
    c["run"]["seed"], c["optim"]["betas"], c["model"]["heads"] = 1, [0.9, 0.99], 4
    del c["model"]["dim"]
    assert recipe_diff(a, c) == ["model.dim: 32 -> '<missing>'", "model.heads: '<missing>' -> 4",
                                 "optim.betas: [0.9, 0.95] -> [0.9, 0.99]", "run.seed: 0 -> 1"]
    # a section replaced by a scalar is one difference, not a crash
    assert recipe_diff({"model": {"dim": 32}}, {"model": "small"}) == ["model: {'dim': 32} -> 'small'"]
    assert recipe_diff([1, 2], (1, 3)) == [": [1, 2] -> [1, 3]"]
    # a list against a scalar is a difference (not a list() of the scalar)
    assert recipe_diff({"x": [1]}, {"x": 1}) == ["x: [1] -> 1"]
    assert recipe_diff({"x": "ab"}, {"x": ["a", "b"]}) == ["x: 'ab' -> ['a', 'b']"]


def test_lr_factor_schedules():
    cos = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.2)
    assert [lr_factor(cos, s, 0.0) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(cos, 4, 0.0) == pytest.approx(1.0)  # warm-up over: cosine at progress 0
    for p in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert lr_factor(cos, 10, p) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * p)))
    assert lr_factor(cos, 10, -1.0) == pytest.approx(1.0) and lr_factor(cos, 10, 3.0) == pytest.approx(0.2)
    nowarm = OptimConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.2)
    assert lr_factor(nowarm, 0, 0.0) == pytest.approx(1.0)
    const = OptimConfig(lr=1.0, warmup_steps=2, schedule="constant")
    assert lr_factor(const, 0, 0.0) == pytest.approx(0.5)
    assert [lr_factor(const, 5, p) for p in (0.0, 0.5, 1.0, 2.0)] == [1.0, 1.0, 1.0, 1.0]
    wsd = OptimConfig(lr=1.0, schedule="wsd", decay_fraction=0.25, min_lr_ratio=0.2)
    assert [lr_factor(wsd, 9, p) for p in (0.0, 0.5, 0.75)] == [1.0, 1.0, 1.0]
    assert lr_factor(wsd, 9, 0.875) == pytest.approx(0.6) and lr_factor(wsd, 9, 1.0) == pytest.approx(0.2)
    assert lr_factor(wsd, 9, 5.0) == pytest.approx(0.2)
