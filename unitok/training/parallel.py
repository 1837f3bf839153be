"""FSDP2 for the engine: sharding a model and its sharded checkpoints (torch.distributed.checkpoint).

    model = fully_shard_model(model, device)    # each transformer block, then the root (torchtitan's order)
    save_sharded(directory, model, optimizer)    # collective: every rank writes its shards into directory
    load_sharded(directory, model, optimizer)    # collective: the same world size, any shard layout

The model's parameters become DTensors sharded over the ranks' first dimension; the optimizer state
follows them. Only the language models shard (tokenizer trainers keep DDP: their EMA and
discriminator modules are small and would need their own sharding).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["fully_shard_model", "save_sharded", "load_sharded", "checkpoint_blocks", "DCP_DIR"]

DCP_DIR = "dcp"  # inside a checkpoint directory


def fully_shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _states(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return get_model_state_dict(model), get_optimizer_state_dict(model, optimizer)


def save_sharded(directory: Path, model: nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp

    m, o = _states(model, optimizer)
    dcp.save({"model": m, "optim": o}, checkpoint_id=str(Path(directory) / DCP_DIR))


def load_sharded(directory: Path, model: nn.Module, optimizer) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from unitok.dcp import load_dcp  # dcp.load, without unpickling the checkpoint's metadata

    m, o = _states(model, optimizer)
    state = {"model": m, "optim": o}
    load_dcp(state, Path(directory) / DCP_DIR)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])



def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing: each transformer block recomputes its activations in the backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = getattr(model, "blocks")
    for i, b in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(b)
