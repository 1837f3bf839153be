"""`unitok tokenizer train`: read a recipe and hand it to its modality's trainer."""

from __future__ import annotations

import importlib

from unitok.config import apply_overrides, read_yaml
from unitok.errors import ConfigError

# modality -> "module:function(args, data: dict)"; `data` is the recipe with overrides applied.
# Every trainer runs on the engine (unitok/training/loop.py) with the shared `optim` and `run` blocks.
TRAINERS = {
    "image": "unitok.training.vqgan:train_from_recipe",
    "video": "unitok.training.vqgan:train_from_recipe",
    "audio": "unitok.training.encodec:train_from_recipe",
}


def run(args) -> int:
    data = apply_overrides(read_yaml(args.config), args.overrides)
    modality = data.get("modality")
    if modality not in TRAINERS:
        raise ConfigError(f"{args.config}: 'modality' must be one of {', '.join(TRAINERS)}, got {modality!r}")
    module, func = TRAINERS[modality].split(":")
    return getattr(importlib.import_module(module), func)(args, data)
