"""Other libraries' models in, ours out (docs/interop.md).

    unitok checkpoint import SRC --out RUN [--format auto|llama|qwen2|qwen3|chameleon|emu3|janus]
    unitok checkpoint export-hf RUN --out DIR                                  # run -> transformers folder

`llama.py` maps the Llama family (Llama, Qwen2, Qwen3, and the language models of Chameleon, Emu3
and Janus) to `ModelConfig` options and our weight names and back; `chameleon.py`, `emu3.py` and
`janus.py` read what is each one's own (image ids, VQ tokenizers, Janus's image head); `hf.py`
reads and writes the folders.
"""

from unitok.interop.hf import FORMATS, export_hf, import_checkpoint, read_hf_weights, unitok_weights

__all__ = ["FORMATS", "import_checkpoint", "export_hf", "read_hf_weights", "unitok_weights"]
