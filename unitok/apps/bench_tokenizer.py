"""`unitok tokenizer bench`: load a tokenizer and run its modality's benchmark."""

from __future__ import annotations

import importlib

from unitok.tokenizers.base import load_tokenizer

BENCHES = {
    "image": "unitok.apps.bench_image:run",
    "video": "unitok.apps.bench_image:run",
    "audio": "unitok.apps.bench_audio:run",
}


def run(args) -> int:
    tok = load_tokenizer(args.tokenizer)
    module, func = BENCHES[tok.modality].split(":")
    return getattr(importlib.import_module(module), func)(args, tok)
