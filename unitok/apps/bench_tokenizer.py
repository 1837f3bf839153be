"""`unitok tokenizer bench`: load a tokenizer and run its modality's benchmark."""

from __future__ import annotations

import importlib

from unitok.tokenizers.base import load_tokenizer

BENCHES = {
    "image": "unitok.bench.image:run",
    "video": "unitok.bench.image:run",
    "audio": "unitok.bench.audio:run",
}


def run(args) -> int:
    tok = load_tokenizer(args.tokenizer)
    module, func = BENCHES[tok.modality].split(":")
    return getattr(importlib.import_module(module), func)(args, tok)
