"""Foreign PyTorch pickles (Lightning .ckpt, encodec .th, pytorch_model.bin): tensors load, nothing runs."""

import argparse
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from unitok.errors import CheckpointError
from unitok.foreign import Refused, load_torch_file, refused_name, state_dict_from
from unitok.tokenizers.audio import AudioTokenizer, hf_to_encodec_state_dict
from unitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, load_state_file
from unitok.tokenizers.quantizers import QuantizerConfig

CALLBACKS = "_unitok_test_lightning_callbacks"  # a module that exists only while a checkpoint is saved


class ModelCheckpoint:
    """A Lightning callback. Pickled as _unitok_test_lightning_callbacks.ModelCheckpoint, which a
    loader that imported what a pickle names could not find."""

    __module__ = CALLBACKS

    def __init__(self):
        self.monitor, self.best_model_score = "val/rec_loss", torch.tensor(0.25)


def _write_marker(path):
    Path(path).write_text("ran")


class _RunsOnLoad:
    """Unpickled by plain pickle, it calls os.system or _write_marker, either creating `path`."""

    def __init__(self, path, via_os_system: bool):
        self.path, self.via_os_system = str(path), via_os_system

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",)) if self.via_os_system else (_write_marker, (self.path,))


def _save_lightning(state: dict, path: Path, legacy: bool = False) -> list[Path]:
    """torch.save what pytorch-lightning saves around `state`, plus two objects that would create
    marker files if their pickled calls ran. Returns the marker paths."""
    markers = [path.parent / f"{path.name}.os_system_ran", path.parent / f"{path.name}.function_ran"]
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()  # optimizer state with tensors
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.4.2", "state_dict": state,
            "callbacks": {"ModelCheckpoint{'monitor': 'val/rec_loss'}": ModelCheckpoint()},
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
            "hparams": argparse.Namespace(lr=4.5e-6, ddconfig={"ch": 32, "ch_mult": [1, 2, 2]}),
            "extra": [_RunsOnLoad(markers[0], True), _RunsOnLoad(markers[1], False)]}
    sys.modules[CALLBACKS] = types.SimpleNamespace(ModelCheckpoint=ModelCheckpoint)  # for pickle's lookup
    try:
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules[CALLBACKS]
    return markers


def _taming_state(tok: ImageTokenizer) -> dict:
    sd = {k: v.clone() for k, v in tok.state_dict().items() if not k.startswith("quantize.")}
    sd["quantize.embedding.weight"] = tok.quantize.vq._codebook.embed[0].clone()
    return sd


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_lightning_checkpoint_loads_tensors_and_runs_nothing(tmp_path, legacy):
    state = {"a.weight": torch.randn(4, 3), "a.bias": torch.arange(4), "h": torch.randn(2, 5).half()}
    state["view"] = state["a.weight"][1:]  # shares a storage
    path = tmp_path / "last.ckpt"
    markers = _save_lightning(state, path, legacy)
    with pytest.raises(Exception):  # torch's own safe loader refuses the file
        torch.load(path, weights_only=True)

    loaded = load_state_file(path)
    assert list(loaded) == list(state)
    for k in state:
        assert loaded[k].dtype == state[k].dtype and torch.equal(loaded[k], state[k])
    assert not any(m.exists() for m in markers)
    assert CALLBACKS not in sys.modules

    obj = load_torch_file(path)  # the rest: plain containers and tensors as saved, inert placeholders
    assert obj["pytorch-lightning_version"] == "1.4.2" and obj["global_step"] == 120
    opt_state = obj["optimizer_states"][0]["state"][0]
    assert torch.is_tensor(opt_state["exp_avg"]) and opt_state["exp_avg"].shape == (3,)
    callback = obj["callbacks"]["ModelCheckpoint{'monitor': 'val/rec_loss'}"]
    assert isinstance(callback, Refused) and not isinstance(callback, ModelCheckpoint)
    assert refused_name(callback) == f"{CALLBACKS}.ModelCheckpoint"
    assert callback.state["monitor"] == "val/rec_loss" and torch.equal(callback.state["best_model_score"], torch.tensor(0.25))
    assert refused_name(obj["hparams"]) == "argparse.Namespace" and obj["hparams"].state["lr"] == 4.5e-6
    system, function = obj["extra"]
    assert refused_name(system) in ("posix.system", "nt.system") and system.args == (f"touch {markers[0]}",)
    assert refused_name(function).endswith("._write_marker")
    assert not any(m.exists() for m in markers)


def test_lightning_taming_checkpoint_reproduces_the_model(tmp_path):
    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], resolution=32,
                               z_channels=32, embed_dim=16,
                               quantizer=QuantizerConfig(codebook_size=64, ema=False, kmeans_init=False))
    ref = ImageTokenizer(cfg).eval()
    with torch.no_grad():
        ref.quantize.vq._codebook.embed.normal_()
    markers = _save_lightning(_taming_state(ref), tmp_path / "vqgan.ckpt")
    tok = ImageTokenizer.from_taming(tmp_path / "vqgan.ckpt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(tok.encode(x), ref.encode(x))
    assert not any(m.exists() for m in markers)


def test_encodec_checkpoint_with_foreign_objects(tmp_path):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(1)
    hf = EncodecModel(EncodecConfig(sampling_rate=800, num_filters=4, upsampling_ratios=[4, 2], hidden_size=8,
                                    num_lstm_layers=1, codebook_size=32, num_residual_layers=1,
                                    target_bandwidths=[0.5, 2.0])).eval()
    state = hf_to_encodec_state_dict(hf.state_dict())
    torch.save(state, tmp_path / "plain.th")
    markers = _save_lightning(state, tmp_path / "wrapped.th")
    plain = AudioTokenizer.from_encodec_checkpoint(tmp_path / "plain.th", sample_rate=800)
    wrapped = AudioTokenizer.from_encodec_checkpoint(tmp_path / "wrapped.th", sample_rate=800)
    for k, v in plain.state_dict().items():
        assert torch.equal(wrapped.state_dict()[k], v), k
    assert not any(m.exists() for m in markers)


def test_pytorch_model_bin_with_a_refused_value_names_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"encoder.w": torch.ones(2), "evil": _RunsOnLoad(marker, True)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text('{"model_type": "encodec"}')
    with pytest.raises(CheckpointError, match=r"'evil' is refused global '(posix|nt)\.system'"):
        AudioTokenizer.from_hf(tmp_path)
    assert not marker.exists()


def test_unreadable_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.ckpt"
    _save_lightning({"w": torch.randn(64, 64)}, good)
    legacy = tmp_path / "legacy.ckpt"
    _save_lightning({"w": torch.randn(64, 64)}, legacy, legacy=True)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module, no state dict
    cases = {
        "junk.ckpt": (b"not a checkpoint", "neither a zip archive"),
        "truncated.ckpt": (good.read_bytes()[: good.stat().st_size // 2], "cannot read PyTorch checkpoint"),
        "truncated_legacy.ckpt": (legacy.read_bytes()[:-100], "truncated or corrupt"),
        "module.pt": (None, "found refused global 'torch.nn.modules.linear.Linear'"),
    }
    for name, (data, expected) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            load_state_file(tmp_path / name)
        msg = str(e.value)
        assert expected in msg and "\n" not in msg and "\x1b" not in msg and "weights_only" not in msg, msg


def test_cli_prints_one_line_without_colour_codes(tmp_path, monkeypatch, capsys):
    import unitok.cli as cli

    (tmp_path / "bad.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a zip's signature, then nothing
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.ckpt")
    # route a real subcommand to the loader: main() prints UnitokError messages as `unitok: error: ...`
    monkeypatch.setattr(cli, "show_vocab", lambda args: load_state_file(args.manifest))
    for name in ("bad.ckpt", "module.ckpt"):
        assert cli.main(["vocab", "show", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("unitok: error: ") and err.count("\n") == 1 and "\x1b" not in err, err
    assert "refused global 'torch.nn.modules.linear.Linear'" in err


def test_state_dict_from_unwraps_and_checks():
    w = torch.ones(2)
    assert state_dict_from({"best_state": {"model": {"w": w}}}, "x")["w"] is w
    assert state_dict_from({"state_dict": {"w": w}, "epoch": 1}, "x")["w"] is w
    with pytest.raises(CheckpointError, match="'n' is int"):
        state_dict_from({"w": w, "n": 1}, "x")
    with pytest.raises(CheckpointError, match="found list"):
        state_dict_from([w], "x")
