"""Read a torch.distributed.checkpoint (DCP) folder without unpickling anything from it.

    load_dcp(state, checkpoint / "dcp", no_dist=True)   # dcp.load, with the two pickles restricted

torch's own reader unpickles `.metadata` with the full pickle module and every non-tensor value
(the optimizer's hyperparameters) with `torch.load(weights_only=False)`: a crafted checkpoint runs
code on load. Here `.metadata` goes through a `RestrictedUnpickler` that allows only what DCP writes
(its metadata dataclasses, torch.Size, dtypes, layouts, the checkpoint's path as a pure path) and
is checked before use: every shard it names is a plain file name inside the folder and every byte
range lies within that file. Non-tensor values are read with `torch.load(weights_only=True)`.
A separate module because `torch.distributed.checkpoint` takes a second to import.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import filesystem, metadata
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from unitok.errors import CheckpointError, inside, one_line
from unitok.foreign import DTYPES, RestrictedUnpickler

__all__ = ["load_dcp", "read_metadata"]

METADATA = ".metadata"
# the globals of a .metadata pickle written by torch 2.13 (FileSystemWriter); nothing else is resolved
_GLOBALS = {
    **{f"{metadata.__name__}.{n}": getattr(metadata, n)
       for n in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                 "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")},
    f"{filesystem.__name__}._StorageInfo": filesystem._StorageInfo,
    "torch.Size": torch.Size, "torch.serialization._get_layout": torch.serialization._get_layout, **DTYPES,
    # StorageMeta.checkpoint_id: where it was written, informative only; a pure path touches no file
    **{f"{m}.{c}": p for m in ("pathlib", "pathlib._local")  # pathlib._local: Python 3.13
       for c, p in (("PosixPath", PurePosixPath), ("WindowsPath", PureWindowsPath))},
}


def read_metadata(directory: Path) -> Metadata:
    """The checked Metadata of a DCP folder; CheckpointError (one line) for anything else."""
    path = Path(directory) / METADATA
    if not path.is_file():
        raise CheckpointError(f"{directory}: incomplete sharded checkpoint, {METADATA} is missing")
    try:
        with open(path, "rb") as f:
            md = RestrictedUnpickler(f, _GLOBALS).load()
    except Exception as e:  # a refused global, a truncated pickle, a call with the wrong arguments ...
        raise CheckpointError(f"{path}: not sharded-checkpoint metadata ({one_line(e)})") from None
    if not (isinstance(md, Metadata) and isinstance(md.state_dict_metadata, dict)
            and isinstance(md.storage_data, dict)):
        raise CheckpointError(f"{path}: not sharded-checkpoint metadata ({type(md).__name__})")
    sizes = {}
    for info in md.storage_data.values():
        if not isinstance(info, filesystem._StorageInfo):
            raise CheckpointError(f"{path}: not sharded-checkpoint metadata ({type(info).__name__} in storage_data)")
        shard = inside(directory, info.relative_path, "shard")
        if shard not in sizes:
            if not shard.is_file():
                raise CheckpointError(f"{directory}: incomplete sharded checkpoint, {info.relative_path} is missing")
            sizes[shard] = shard.stat().st_size
        span = (info.offset, info.length)
        if not all(isinstance(v, int) and v >= 0 for v in span) or sum(span) > sizes[shard]:
            raise CheckpointError(f"{path}: bytes {span} of {info.relative_path} lie outside its "
                                  f"{sizes[shard]} bytes")
        if info.transform_descriptors:  # compression extensions: unitok writes none
            raise CheckpointError(f"{path}: {info.relative_path} is stored with {info.transform_descriptors!r}")
    return md


class _Reader(FileSystemReader):
    """FileSystemReader that returns metadata read (and checked) beforehand by `read_metadata`."""

    def __init__(self, directory: Path, md: Metadata):
        super().__init__(directory)
        self._md = md

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if self._md.storage_meta is None:  # as FileSystemReader.read_metadata does
            self._md.storage_meta = StorageMeta()
        self._md.storage_meta.load_id = self.load_id
        return self._md


class _Planner(DefaultLoadPlanner):
    """DefaultLoadPlanner with non-tensor values read by torch.load(weights_only=True)."""

    def load_bytes(self, read_item, value) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        fqn = read_item.dest_index.fqn
        if isinstance(self.state_dict.get(fqn), torch.Tensor):
            raise CheckpointError(f"{fqn}: a tensor stored as bytes in the sharded checkpoint")
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes does
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def load_dcp(state: dict, directory: Path, *, no_dist: bool = False) -> None:
    """torch.distributed.checkpoint.load(state) from `directory`, in place, reading no pickle unrestricted.
    Any failure is a one-line CheckpointError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = _Reader(Path(directory), read_metadata(Path(directory)))
    try:
        dcp.load(state, storage_reader=reader, planner=_Planner(), no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # CheckpointException (a BaseException) holds each rank's error
        failures = getattr(e, "failures", None)
        first = next(iter(failures.values()))[0] if failures else e
        why = first if isinstance(first, CheckpointError) else one_line(first)
        raise CheckpointError(f"{directory}: cannot read the sharded checkpoint ({why})") from None
