"""Read foreign PyTorch pickles (.ckpt, .th, .pt, pytorch_model.bin) without executing anything.

    obj = load_torch_file("vqgan.ckpt")          # tensors and plain containers; anything else inert
    state = state_dict_from(obj, "vqgan.ckpt")   # unwraps best_state / model / state_dict

`torch.load(weights_only=True)` refuses a whole file over one global outside its allow-list, and
Lightning checkpoints carry several (callbacks, `argparse.Namespace` hparams, other objects beside
`state_dict`). Such files are read again by our own unpickler, which resolves globals from a fixed
table and never imports a module: tensors are rebuilt by torch's rebuild functions, and every
other global becomes a `Refused` placeholder that records what the pickle gives it (arguments,
state, items) and never calls anything, so a `__reduce__` naming `os.system` yields a placeholder
instead of running. Both of torch's formats are read: the zip (`<name>/data.pkl` plus one record
`<name>/data/<key>` per storage) and the pre-1.6 stream of pickles followed by raw storages.
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from functools import partial
from pathlib import Path
from types import FunctionType

import torch

from unitok.errors import CheckpointError

__all__ = ["load_torch_file", "state_dict_from", "Refused", "refused_name"]


class Refused:
    """Stands in for an object of a class outside the allow-list, or for the result of calling a
    function outside it. Each refused global gets its own subclass, whose `name` is "module.name"."""

    name = "?"

    def __new__(cls, *args, **kwargs):  # REDUCE / NEWOBJ(_EX): keep the positional arguments, call nothing
        self = super().__new__(cls)
        self.args, self.state, self.items = args, None, []
        return self

    def __setstate__(self, state):  # BUILD
        self.state = state

    def append(self, item):  # APPEND(S) into a list subclass
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):  # SETITEM(S) into a dict subclass (e.g. Lightning's AttributeDict)
        self.items.append((key, value))

    def __repr__(self):
        return f"<refused {self.name}>"


def refused_name(x) -> str | None:
    """The refused global behind `x` (a placeholder instance or class), else None."""
    cls = x if isinstance(x, type) else type(x)
    return cls.name if issubclass(cls, Refused) else None


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    # protocol-2 pickles write bytes as _codecs.encode(text, "latin1"); no other codec is looked up
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return text.encode("latin1")


# The only globals a pickle may name. Storage classes appear only as the type in a storage's
# persistent id, so they map to their dtype (never constructed).
_ALLOWED = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
    "builtins.bytearray": bytearray, "builtins.slice": slice, "_codecs.encode": _latin1,
    "torch.Size": torch.Size,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    **{f"torch.{n}": v for n, v in vars(torch).items() if isinstance(v, torch.dtype)},
    **{f"{m}.{n}": d for d, n in torch.storage._dtype_to_storage_type_map().items() for m in ("torch", "torch.cuda")},
    "torch.UntypedStorage": torch.uint8, "torch.storage.UntypedStorage": torch.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch's pre-1.6 format (torch.serialization.MAGIC_NUMBER)


class _Unpickler(pickle.Unpickler):
    """Resolves globals from `_ALLOWED`, else to a `Refused` subclass kept in `refused` (one per
    global and per file), and storages through `storage`, a function (key, dtype, numel) ->
    TypedStorage supplied by the file format's reader."""

    def __init__(self, file, refused: dict, storage=None):
        super().__init__(file, encoding="utf-8")
        self._refused, self._storage = refused, storage

    def find_class(self, module, name):
        key = f"{'builtins' if module == '__builtin__' else module}.{name}"  # protocol 2 writes py2 names
        obj = _ALLOWED.get(key)
        if obj is None:
            if key not in self._refused:
                self._refused[key] = type(key, (Refused,), {"name": key})
            obj = self._refused[key]
        # a fresh wrapper per lookup, so a BUILD on it cannot rewrite torch's own functions
        return partial(obj) if isinstance(obj, FunctionType) else obj

    def persistent_load(self, pid):
        if pid[0] == "module":  # legacy format: the class of a pickled nn.Module (a placeholder here)
            return pid[1]
        typename, dtype, key, _location, numel, *view = pid  # the location is ignored: all on CPU
        if typename != "storage" or not isinstance(dtype, torch.dtype) or any(v is not None for v in view):
            raise pickle.UnpicklingError(f"unsupported persistent id {typename!r}")
        if self._storage is None:
            raise pickle.UnpicklingError("a storage outside the object pickle")
        return self._storage(str(key), dtype, numel)


def _typed(storage: torch.UntypedStorage, dtype: torch.dtype, numel: int, key: str) -> torch.storage.TypedStorage:
    if storage.nbytes() != numel * dtype.itemsize:
        raise pickle.UnpicklingError(f"storage {key}: {storage.nbytes()} bytes, expected {numel * dtype.itemsize}")
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _read_zip(path: Path, refused: dict):
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise CheckpointError("a zip archive without <name>/data.pkl: not written by torch.save")
        prefix = pkl[: -len("data.pkl")]
        order = z.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        storages = {}

        def storage(key, dtype, numel):
            if key not in storages:
                s = torch.UntypedStorage.from_buffer(z.read(f"{prefix}data/{key}"), dtype=torch.uint8)
                if order != sys.byteorder:
                    s.byteswap(dtype)
                storages[key] = _typed(s, dtype, numel, key)
            return storages[key]

        with z.open(pkl) as f:
            return _Unpickler(f, refused, storage).load()


def _read_legacy(path: Path, refused: dict):
    # pickles of: magic number, protocol version, system info, the object, its storage keys; then
    # each storage as an int64 element count and its bytes, little-endian
    with open(path, "rb") as f:
        try:
            magic = _Unpickler(f, refused).load()
        except Exception:
            magic = None
        if magic != _LEGACY_MAGIC:
            raise CheckpointError("neither a zip archive nor torch's legacy format")
        for _ in range(2):  # protocol version, system info
            _Unpickler(f, refused).load()
        raw, typed = {}, {}  # key -> (UntypedStorage, dtype) / TypedStorage, allocated here, filled below

        def storage(key, dtype, numel):
            if key not in typed:
                raw[key] = (torch.UntypedStorage(numel * dtype.itemsize), dtype)
                typed[key] = _typed(raw[key][0], dtype, numel, key)
            return typed[key]

        obj = _Unpickler(f, refused, storage).load()
        for key in _Unpickler(f, refused).load():
            s, dtype = raw[str(key)]
            numel = int.from_bytes(f.read(8), "little")
            data = f.read(s.nbytes())
            if numel * dtype.itemsize != s.nbytes() or len(data) != s.nbytes():
                raise CheckpointError(f"truncated or corrupt file: storage {key} has the wrong size")
            s.copy_(torch.UntypedStorage.from_buffer(data, dtype=torch.uint8))
            if sys.byteorder != "little":
                s.byteswap(dtype)
        return obj


def _one_line(e: BaseException) -> str:
    """`Type: first sentence of the first line` of an error, without terminal colour codes."""
    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if x.strip()]
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", lines[0])[0] if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_torch_file(path: str | Path) -> object:
    """The object in a torch.save file, on CPU, without executing anything from the file.

    Raises CheckpointError (one line) if the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a global outside torch's allow-list (or not a pickle at all)
        pass
    except Exception as e:  # truncated zip, TorchScript archive, ...
        raise CheckpointError(f"{p}: cannot read PyTorch checkpoint ({_one_line(e)})") from None
    refused = {}
    try:
        return _read_zip(p, refused) if zipfile.is_zipfile(p) else _read_legacy(p, refused)
    except CheckpointError as e:  # the readers' own findings
        raise CheckpointError(f"{p}: cannot read PyTorch checkpoint ({e})") from None
    except Exception as e:  # e.g. a refused object passed where torch's rebuild functions expect a storage
        names = ", ".join(f"'{k}'" for k in refused)
        raise CheckpointError(f"{p}: cannot read PyTorch checkpoint ({_one_line(e)})"
                              + (f"; refused global{'s' * (len(refused) > 1)} {names}" if names else "")) from None


def state_dict_from(obj, path, keys=("best_state", "model", "state_dict")) -> dict[str, torch.Tensor]:
    """The dict of tensors in a loaded checkpoint, unwrapping each of `keys` in turn where present
    (encodec/audiocraft `best_state`, `model`; Lightning `state_dict`). CheckpointError otherwise."""
    for key in keys:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]

    def what(x):
        name = refused_name(x)
        return f"refused global '{name}'" if name else type(x).__name__

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {what(obj)}")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: expected a state dict of tensors, but {k!r} is {what(v)}")
    return obj
