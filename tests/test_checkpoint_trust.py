"""Crafted checkpoints and torch files: loading runs nothing from them, reads nothing outside them, and
allocates no size they state before checking it against the bytes they hold. Each crafted file would
succeed (or run its code, or allocate) with the loaders before these checks."""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_checkpoint import VOCAB, _model, _save_sharded, _tiny_image_tokenizer
from test_cli import assert_user_error, run_cli

from unitok import checkpoint as ck
from unitok.config import to_dict
from unitok.dcp import load_dcp, read_metadata
from unitok.errors import CheckpointError, inside
from unitok.foreign import load_torch_file

ROOT = Path(__file__).resolve().parents[1]


class _CreatesFile:
    """Unpickled by plain pickle (or torch.load(weights_only=False)), it creates `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


def _save_lm(d, **kw):
    model = _model(0)
    return ck.save_checkpoint(d, kind="transformer", config=to_dict(model.cfg), modules={"model": model},
                              state={"step": 1}, **{"vocab": VOCAB, **kw})


def _set_meta(d, **changes):
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, **changes}))


# ------------------------------------------------------------------ crafted checkpoints
def _dcp_metadata_runs_code(tmp):
    d = tmp / "ckpt"
    _save_sharded(d)
    (d / "dcp" / ".metadata").write_bytes(pickle.dumps(_CreatesFile(tmp / "ran")))
    return d, "refused global 'builtins.exec'"


def _tokenizer_name_climbs_out(tmp):
    # a loadable tokenizer two levels up: the name reaches it from ckpt/tokenizers/
    _tiny_image_tokenizer(0).save_pretrained(tmp / "elsewhere" / "image")
    d = _save_lm(tmp / "ckpt", vocab=None)
    _set_meta(d, tokenizers=["../../elsewhere/image"])
    return d, "tokenizer name '../../elsewhere/image' is not the plain name"


def _weights_name_climbs_out(tmp):
    d = _save_lm(tmp / "ckpt")
    (tmp / "outside").mkdir()
    shutil.move(d / "model.safetensors", tmp / "outside" / "model.safetensors")  # loadable weights, outside
    _set_meta(d, weights="../outside/model")
    return d, "weights name '../outside/model' is not the plain name"


def _symlinked_tokenizer_folder(tmp):
    _tiny_image_tokenizer(0).save_pretrained(tmp / "elsewhere" / "image")
    d = _save_lm(tmp / "ckpt", vocab=None)
    (d / "tokenizers").mkdir()
    (d / "tokenizers" / "image").symlink_to(tmp / "elsewhere" / "image", target_is_directory=True)
    _set_meta(d, tokenizers=["image"])
    return d, "tokenizers/image is a symlink"


CRAFTED = [_dcp_metadata_runs_code, _tokenizer_name_climbs_out, _weights_name_climbs_out, _symlinked_tokenizer_folder]


@pytest.mark.parametrize("craft", CRAFTED, ids=lambda f: f.__name__.strip("_"))
def test_crafted_checkpoint_is_refused_by_every_loader(tmp_path, craft):
    d, expected = craft(tmp_path)
    for load in (ck.load_model, lambda p: ck.export(p, tmp_path / "exported")):
        with pytest.raises(CheckpointError) as e:
            load(d)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "exported").exists() and not (tmp_path / "ran").exists()
    r = run_cli("generate", str(d), "--task", "text-to-text", "--out", str(tmp_path / "out"))
    assert_user_error(r, expected)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "C:x", "a\\b", "..", "", "x\0", 3, None])
def test_inside_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(CheckpointError, match="is not the plain name"):
        inside(tmp_path, name, "weights name")
    assert inside(tmp_path, "model.x", "weights name") == tmp_path / "model.x"


def test_absolute_weights_name_and_text_model_file_are_refused(tmp_path):
    d = _save_lm(tmp_path / "ckpt")
    shutil.copy(d / "model.safetensors", tmp_path / "abs.safetensors")
    _set_meta(d, weights=str(tmp_path / "abs"))
    with pytest.raises(CheckpointError, match="is not the plain name"):
        ck.load_model(d)
    from unitok.tokenizers.text import TextTokenizer

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"type": "text-sentencepiece",
                                                              "model_file": "../secret.model"}))
    (tmp_path / "secret.model").write_bytes(b"outside")
    with pytest.raises(CheckpointError, match="model_file '../secret.model' is not the plain name"):
        TextTokenizer.from_pretrained(tmp_path / "tok")


def test_links_and_special_files_are_never_copied_or_read(tmp_path):
    (tmp_path / "secret").write_text("outside")
    tok = _tiny_image_tokenizer(0)
    tok.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "notes.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(CheckpointError, match="notes.txt is a symlink"):  # save_checkpoint copying a folder
        _save_lm(tmp_path / "c", tokenizers={"image": tmp_path / "saved"})
    (tmp_path / "saved" / "notes.txt").unlink()
    d = _save_lm(tmp_path / "c", tokenizers={"image": tmp_path / "saved"})
    assert sorted(p.name for p in (d / "tokenizers" / "image").iterdir()) == ["config.json", "model.safetensors"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").symlink_to(d, target_is_directory=True)  # a run directory's checkpoint elsewhere
    with pytest.raises(CheckpointError, match="is a symlink"):
        ck.load_model(run)
    os.mkfifo(d / "fifo")  # reading it would block
    with pytest.raises(CheckpointError, match="fifo is a special file"):
        ck.load_model(d)
    (d / "fifo").unlink()
    (d / "vocab.json").unlink()
    (d / "vocab.json").symlink_to(tmp_path / "secret")
    with pytest.raises(CheckpointError, match="vocab.json is a symlink"):
        ck.export(d, tmp_path / "exp")


# ------------------------------------------------------------------ sharded (DCP) checkpoints
def _rewrite_metadata(dcp_dir, edit):
    md = read_metadata(dcp_dir)
    md.storage_meta.checkpoint_id = str(md.storage_meta.checkpoint_id)  # read back as a pure path
    edit(md)
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(md))


def _append(shard: Path, data: bytes):
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(data)
    return _StorageInfo(relative_path=shard.name, offset=offset, length=len(data))


def test_dcp_metadata_is_checked_before_use(tmp_path):
    d = tmp_path / "ckpt"
    model = _save_sharded(d)
    dcp = d / "dcp"
    assert all(torch.equal(ck.load_model(d).model.state_dict()[k], v) for k, v in model.state_dict().items())
    good = (dcp / ".metadata").read_bytes()
    # a shard named by a path: a copy of the real shard outside would load
    shutil.copy(dcp / "__0_0.distcp", tmp_path / "outside.distcp")
    _rewrite_metadata(dcp, lambda md: [setattr(i, "relative_path", "../../outside.distcp")
                                       for i in md.storage_data.values()])
    with pytest.raises(CheckpointError, match="shard '../../outside.distcp' is not the plain name"):
        ck.load_model(d)
    # a byte range past the end of its shard
    (dcp / ".metadata").write_bytes(good)
    _rewrite_metadata(dcp, lambda md: setattr(next(iter(md.storage_data.values())), "length", 1 << 40))
    with pytest.raises(CheckpointError, match="lie outside its"):
        ck.load_model(d)
    # a BUILD on an allowed class would set its attributes for the whole process
    m = "torch.distributed.checkpoint.metadata"
    (dcp / ".metadata").write_bytes(b"\x80\x02c" + m.encode() + b"\nMetadata\nN}X\x01\x00\x00\x00xK\x01s\x86b.")
    with pytest.raises(CheckpointError, match="a BUILD on the class 'Metadata'"):
        ck.load_model(d)
    from torch.distributed.checkpoint.metadata import Metadata

    assert not hasattr(Metadata, "x")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process: intended
def test_dcp_non_tensor_values_are_read_weights_only(tmp_path):
    """torch's planner reads non-tensor values (an optimizer's lr, betas) with weights_only=False."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    model = _model(0)
    dcp.save({"model": model.state_dict(), "lr": 0.5, "betas": (0.9, 0.95)},
             checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    state = {"model": _model(1).state_dict(), "lr": 0.0, "betas": (0.0, 0.0)}
    load_dcp(state, tmp_path / "dcp", no_dist=True)
    assert state["lr"] == 0.5 and state["betas"] == (0.9, 0.95)
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    shard, good = tmp_path / "dcp" / "__0_0.distcp", (tmp_path / "dcp" / ".metadata").read_bytes()
    evil = pickle.dumps(_CreatesFile(tmp_path / "ran"), protocol=2)

    def point_lr_at_evil(md):
        md.storage_data[MetadataIndex("lr")] = _append(shard, evil)

    _rewrite_metadata(tmp_path / "dcp", point_lr_at_evil)
    with pytest.raises(CheckpointError, match="cannot read the sharded checkpoint"):
        load_dcp({"lr": 0.0}, tmp_path / "dcp", no_dist=True)
    (tmp_path / "dcp" / ".metadata").write_bytes(good)

    def tensor_as_evil_bytes(md):
        md.state_dict_metadata["model.tok_emb.weight"] = BytesStorageMetadata()
        md.storage_data[MetadataIndex("model.tok_emb.weight")] = _append(shard, evil)

    _rewrite_metadata(tmp_path / "dcp", tensor_as_evil_bytes)
    with pytest.raises(CheckpointError, match="a tensor stored as bytes"):
        load_dcp({"model": _model(1).state_dict()}, tmp_path / "dcp", no_dist=True)
    assert not (tmp_path / "ran").exists()


# ------------------------------------------------------------------ stated sizes in torch files
class _Storage:
    def __init__(self, numel):
        self.numel = numel


class _Tensor:
    """Pickles as a float32 tensor over a storage claiming `numel` elements."""

    def __init__(self, numel):
        self.storage, self.numel = _Storage(numel), numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.numel,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    view = ()  # the legacy format's persistent id ends with a view slot

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel, *self.view) if isinstance(obj, _Storage) else None


def _zip_pt(path, obj, record: bytes | None = None, *, states=None, inflating_mb=0):
    """A torch.save-style zip: data.pkl holding `obj`, record data/0 holding `record` (or
    `inflating_mb` of zeros, deflated), whose stated size can be forged to `states`."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if inflating_mb else zipfile.ZIP_STORED,
                         compresslevel=1) as z:  # deflate level 1: ~230x on zeros, within deflate's ceiling
        z.writestr("a/data.pkl", buf.getvalue())
        z.writestr("a/byteorder", "little")
        z.writestr("a/version", "3\n")
        if inflating_mb:
            with z.open("a/data/0", "w") as f:
                for _ in range(inflating_mb):
                    f.write(bytes(1 << 20))
        else:
            z.writestr("a/data/0", record)
        if states is not None:
            z.getinfo("a/data/0").file_size = states  # the central directory states it


def _legacy_pt(path, numel, data: bytes):
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        p = _Pickler(f, protocol=2)
        p.view = (None,)
        p.dump({"w": _Tensor(numel)})
        pickle.dump(["0"], f, protocol=2)
        f.write(numel.to_bytes(8, "little") + data)


_PEAK = """
import json, resource, sys
import torch
from unitok.foreign import load_torch_file
from unitok.errors import CheckpointError
kb = 1 / 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
load_torch_file(sys.argv[1])  # a small good file first: the baseline includes the code paths
base, out = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb, {}
for p in sys.argv[2:]:
    try:
        load_torch_file(p)
        out[p] = [None]
    except CheckpointError as e:
        out[p] = [str(e)]
    out[p].append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb - base) / 1024)
print(json.dumps(out))
"""


def test_stated_sizes_are_checked_before_allocating(tmp_path):
    """A zip record stating 1 TB, a record that inflates to 256 MB behind a 4-element tensor, and a
    legacy pickle claiming 10^12 elements: each refused in a subprocess whose peak memory stays within
    200 MB of a baseline measured there after loading a small good file."""
    torch.save({"w": torch.ones(4)}, tmp_path / "good.pt")
    one_tb = 10**12
    cases = {
        "record_states_1tb.pt": ({"w": _Tensor(one_tb // 4)}, dict(record=bytes(16), states=one_tb),
                                 f"record a/data/0 states {one_tb} bytes, more than the 16 bytes stored for it hold"),
        # the refused global first, so torch's reader gives up before the record and ours reads the tensor
        "record_inflates.pt": ({"evil": _CreatesFile(tmp_path / "ran"), "w": _Tensor(4)}, dict(inflating_mb=256),
                               "record a/data/0 states 268435456 bytes, the tensor needs 16"),
    }
    for name, (obj, kw, _) in cases.items():
        _zip_pt(tmp_path / name, obj, **kw)
    _legacy_pt(tmp_path / "legacy_1e12.pt", one_tb, bytes(16))
    cases["legacy_1e12.pt"] = (None, None, f"storage 0 claims {one_tb} elements")
    assert (tmp_path / "record_inflates.pt").stat().st_size < 2 << 20
    r = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "good.pt"), *(str(tmp_path / n) for n in cases)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    for name, (*_, expected) in cases.items():
        message, peak_mb = results[str(tmp_path / name)]
        assert message is not None and expected in message and "\n" not in message, (name, message)
        assert peak_mb < 200, (name, peak_mb)
    assert not (tmp_path / "ran").exists()


def test_honest_files_of_both_formats_still_load(tmp_path):
    """The same writers with sizes that agree: the checks refuse nothing real."""
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    _zip_pt(tmp_path / "z.pt", {"evil": _CreatesFile(tmp_path / "ran"), "w": _Tensor(4)}, data)
    _legacy_pt(tmp_path / "l.pt", 4, data)
    for name in ("z.pt", "l.pt"):
        assert torch.equal(load_torch_file(tmp_path / name)["w"], torch.arange(4.0)), name
    assert not (tmp_path / "ran").exists()
    _legacy_pt(tmp_path / "short.pt", 100, data)  # claims more elements than the file holds
    with pytest.raises(CheckpointError, match="storage 0 claims 100 elements"):
        load_torch_file(tmp_path / "short.pt")
