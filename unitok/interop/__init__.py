"""Other libraries' models in, ours out (docs/interop.md).

    unitok checkpoint import SRC --out RUN [--format auto|llama|qwen2|qwen3]   # transformers folder -> run
    unitok checkpoint export-hf RUN --out DIR                                  # run -> transformers folder

`llama.py` maps the Llama family (Llama, Qwen2, Qwen3) to `ModelConfig` options and our weight
names and back; `hf.py` reads and writes the folders.
"""

from unitok.interop.hf import FORMATS, export_hf, import_checkpoint, read_hf_weights, unitok_weights

__all__ = ["FORMATS", "import_checkpoint", "export_hf", "read_hf_weights", "unitok_weights"]
