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

Sizes a file states are checked before anything is allocated: a zip record's stated size against
the bytes the archive holds for it (torch allocates a record's stated size before inflating it) and
against the tensor's byte size; a legacy storage's element count against the bytes left in the file
(torch's legacy loader allocates every storage a pickle claims before reading any, so legacy files
are read by our reader alone). `RestrictedUnpickler` also reads the other pickles on a load path,
with their own allow-lists (the metadata of sharded checkpoints: unitok.dcp).
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from collections import OrderedDict
from functools import partial
from pathlib import Path
from types import FunctionType

import torch

from unitok.errors import CheckpointError, one_line

__all__ = ["load_torch_file", "load_weights_only", "state_dict_from", "Refused", "refused_name",
           "RestrictedUnpickler", "DTYPES", "MAX_INFLATION"]


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


DTYPES = {f"torch.{n}": v for n, v in vars(torch).items() if isinstance(v, torch.dtype)}
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
    **DTYPES,
    **{f"{m}.{n}": d for d, n in torch.storage._dtype_to_storage_type_map().items() for m in ("torch", "torch.cuda")},
    "torch.UntypedStorage": torch.uint8, "torch.storage.UntypedStorage": torch.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch's pre-1.6 format (torch.serialization.MAGIC_NUMBER)
# A deflated record inflates to at most ~1032x its compressed size (deflate's ceiling): a record that
# states more lies about its size. torch.save stores records uncompressed (stated size = stored size).
MAX_INFLATION = 1032


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves the globals a pickle names from `allowed` only and never imports a module; any other
    global goes to `refuse` (an error here). The pure-Python unpickler, for its BUILD hook: a BUILD
    on a class would set attributes of the allowed class itself, so it is refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, allowed: dict):
        super().__init__(file, encoding="utf-8")
        self._allowed = allowed

    def find_class(self, module, name):
        key = f"{'builtins' if module == '__builtin__' else module}.{name}"  # protocol 2 writes py2 names
        obj = self._allowed.get(key)
        if obj is None:
            obj = self.refuse(key)
        # a fresh wrapper per lookup, so a BUILD on it cannot rewrite torch's own functions
        return partial(obj) if isinstance(obj, FunctionType) else obj

    def refuse(self, key: str):
        raise pickle.UnpicklingError(f"refused global '{key}'")

    def load_build(self):
        if isinstance(self.stack[-2], type):
            raise pickle.UnpicklingError(f"a BUILD on the class '{self.stack[-2].__qualname__}'")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


class _Unpickler(RestrictedUnpickler):
    """Resolves globals from `_ALLOWED`, else to a `Refused` subclass kept in `refused` (one per
    global and per file), and storages through `storage`, a function (key, dtype, numel) ->
    TypedStorage supplied by the file format's reader."""

    def __init__(self, file, refused: dict, storage=None):
        super().__init__(file, _ALLOWED)
        self._refused, self._storage = refused, storage

    def refuse(self, key: str):
        if key not in self._refused:
            self._refused[key] = type(key, (Refused,), {"name": key})
        return self._refused[key]

    def persistent_load(self, pid):
        if pid[0] == "module":  # legacy format: the class of a pickled nn.Module (a placeholder here)
            return pid[1]
        typename, dtype, key, _location, numel, *view = pid  # the location is ignored: all on CPU
        if typename != "storage" or not isinstance(dtype, torch.dtype) or any(v is not None for v in view):
            raise pickle.UnpicklingError(f"unsupported persistent id {typename!r}")
        if self._storage is None:
            raise pickle.UnpicklingError("a storage outside the object pickle")
        return self._storage(str(key), dtype, numel)


def _typed(storage: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _nbytes(key, dtype: torch.dtype, numel) -> int:
    if not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"storage {key}: element count {numel!r} is not a count")
    return numel * dtype.itemsize


def _check_records(z: zipfile.ZipFile, size: int) -> None:
    """Every record's stated size within what the bytes stored for it (in a file of `size` bytes) hold."""
    for info in z.infolist():
        held = min(info.compress_size, size)
        if info.file_size > held * (1 if info.compress_type == zipfile.ZIP_STORED else MAX_INFLATION):
            raise CheckpointError(f"record {info.filename} states {info.file_size} bytes, more than the {held} "
                                  "bytes stored for it hold")


def _read_zip(path: Path, refused: dict):
    """After load_weights_only, which checked the records' sizes."""
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
                name, nbytes = f"{prefix}data/{key}", _nbytes(key, dtype, numel)
                if name not in names:
                    raise CheckpointError(f"storage {key} has no record {name}")
                if z.getinfo(name).file_size != nbytes:  # before inflating it
                    raise CheckpointError(f"record {name} states {z.getinfo(name).file_size} bytes, the tensor "
                                          f"needs {nbytes}")
                data = z.read(name)
                if len(data) != nbytes:
                    raise CheckpointError(f"truncated or corrupt file: record {name} has the wrong size")
                s = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8)
                if order != sys.byteorder:
                    s.byteswap(dtype)
                storages[key] = _typed(s, dtype)
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
        size, claimed = path.stat().st_size, 0

        def storage(key, dtype, numel):
            nonlocal claimed
            if key not in typed:
                nbytes, left = _nbytes(key, dtype, numel), size - f.tell()
                claimed += nbytes
                if claimed > left:  # the storages' bytes follow the pickles
                    raise CheckpointError(f"storage {key} claims {numel} elements; the storages would need "
                                          f"{claimed} bytes, more than the {left} left in the file")
                raw[key] = (torch.UntypedStorage(nbytes), dtype)
                typed[key] = _typed(raw[key][0], dtype)
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


def load_weights_only(path: Path, map_location="cpu"):
    """torch.load(weights_only=True) of a torch.save zip, once its records' stated sizes are checked
    (CheckpointError, one line); torch's own errors pass through."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError("not a zip archive written by torch.save")
    with zipfile.ZipFile(path) as z:
        _check_records(z, path.stat().st_size)
    return torch.load(path, map_location=map_location, weights_only=True)


def load_torch_file(path: str | Path) -> object:
    """The object in a torch.save file, on CPU, without executing anything from the file.

    Raises CheckpointError (one line) if the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    refused = {}
    try:
        if not zipfile.is_zipfile(p):
            return _read_legacy(p, refused)
        try:
            return load_weights_only(p)
        except pickle.UnpicklingError:  # a global outside torch's allow-list: read again by ours
            return _read_zip(p, refused)
    except CheckpointError as e:  # the readers' own findings
        raise CheckpointError(f"{p}: cannot read PyTorch checkpoint ({e})") from None
    except Exception as e:  # e.g. a refused object passed where torch's rebuild functions expect a storage
        names = ", ".join(f"'{k}'" for k in refused)
        raise CheckpointError(f"{p}: cannot read PyTorch checkpoint ({one_line(e)})"
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
