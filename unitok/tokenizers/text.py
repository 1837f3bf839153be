"""Text tokenizers: SentencePiece BPE with byte fallback (ours), and any `tokenizer.json`.

Trained with identity normalization, no dummy prefix and no whitespace
collapsing, so any UTF-8 string round-trips exactly (`decode(encode(s)) == s`).
SentencePiece uses U+2581 ("▁") as its whitespace marker; a literal U+2581 in
the input is encoded as its three UTF-8 byte pieces so it is not turned into a
space on the way back.

    tok = TextTokenizer.train(["corpus.txt"], vocab_size=8000)
    tok.save_pretrained("runs/spm")            # config.json + spm.model
    tok = TextTokenizer.from_pretrained("runs/spm")
    tok = TextTokenizer.from_model_file("m.model")   # any existing SentencePiece model

`HFTextTokenizer` wraps a Hugging Face `tokenizer.json` (read by the `tokenizers` package; the file
is JSON, nothing in it executes) with the same interface: the text tokenizer of a model imported with
`unitok checkpoint import`, which keeps that model's ids. It encodes without adding special tokens
(the vocabulary's <bos> is written by whoever builds the sequence) and decodes every id, special
tokens included, so byte-level BPEs round-trip `decode(encode(s)) == s`.

    tok = HFTextTokenizer.from_file("llama/tokenizer.json", vocab_size=128256)
"""

from __future__ import annotations

import hashlib
import io
import json
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar, Iterable

import sentencepiece as spm

from unitok.errors import CheckpointError, DataError, inside
from unitok.tokenizers.base import CONFIG_NAME, Tokenizer, read_tokenizer_config

__all__ = ["TextTokenizer", "HFTextTokenizer"]

MODEL_NAME = "spm.model"
TOKENIZER_JSON = "tokenizer.json"
_META = "\u2581"


class _OneFileTextTokenizer(Tokenizer):
    """What both text tokenizers share: the model is one file (`_data`, bytes), saved under
    `file_name` beside a config.json that records its hash, which loading checks."""

    modality = "text"
    file_name: ClassVar[str]
    _data: bytes

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.vocab_size]

    def identity(self) -> dict:
        return {"type": self.type_name, "vocab_size": self.vocab_size, "sha256": hashlib.sha256(self._data).hexdigest()[:16]}

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / self.file_name).write_bytes(self._data)
        (d / CONFIG_NAME).write_text(json.dumps({**self.identity(), "model_file": self.file_name}, indent=2) + "\n")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        d = Path(directory)
        cfg = read_tokenizer_config(d, cls.type_name)
        tok = cls._from_saved(inside(d, cfg.get("model_file", cls.file_name), "model_file"), cfg)
        if cfg.get("sha256") and tok.identity()["sha256"] != cfg["sha256"]:
            raise CheckpointError(f"{d}: {cls.file_name} does not match the hash in {CONFIG_NAME} (modified or corrupt)")
        return tok

    @classmethod
    @abstractmethod
    def _from_saved(cls, path: Path, cfg: dict):
        """The tokenizer in `path`, with what its config.json says."""


class TextTokenizer(_OneFileTextTokenizer):
    type_name = "text-sentencepiece"
    file_name = MODEL_NAME

    def __init__(self, model_proto: bytes):
        self._data = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self._data)
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"not a valid SentencePiece model ({str(e).splitlines()[0]})") from None
        self._meta_bytes = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode()]
        self._has_bytes = all(self.sp.is_byte(i) for i in self._meta_bytes)

    # ------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        files: Iterable[str | Path],
        vocab_size: int = 8000,
        *,
        model_type: str = "bpe",
        max_sentence_length: int = 16384,
        input_sentence_size: int = 2_000_000,
        num_threads: int = 2,
    ) -> "TextTokenizer":
        """Train a byte-fallback model on text files (one sentence per line)."""
        paths = [Path(f) for f in files]
        if not paths:
            raise DataError("no text files given to train the tokenizer on")
        for p in paths:
            if not p.is_file():
                raise DataError(f"text file not found: {p}")
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                input=[str(p) for p in paths],
                model_writer=out,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                unk_id=0,
                character_coverage=0.9995,
                max_sentence_length=max_sentence_length,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                num_threads=num_threads,
                minloglevel=2,
            )
        except RuntimeError as e:
            # e.g. "Vocabulary size too high (8000). Please set it to a value <= 1234."
            raise DataError(f"SentencePiece training failed: {str(e).splitlines()[-1]}") from None
        return cls(out.getvalue())

    # ------------------------------------------------------------ encode/decode
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"TextTokenizer.encode expects a str, got {type(text).__name__}")
        if _META not in text or not self._has_bytes:
            return self.sp.encode(text)
        ids: list[int] = []
        for k, part in enumerate(text.split(_META)):
            if k:
                ids.extend(self._meta_bytes)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.sp.decode([int(i) for i in ids])

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model: `TextTokenizer(tok.model_proto)` is the same tokenizer."""
        return self._data

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    # ------------------------------------------------------------ save/load
    @classmethod
    def _from_saved(cls, path: Path, cfg: dict) -> "TextTokenizer":
        return cls.from_model_file(path)

    @classmethod
    def from_model_file(cls, path: str | Path) -> "TextTokenizer":
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"SentencePiece model not found: {p}")
        try:
            return cls(p.read_bytes())
        except CheckpointError as e:
            raise CheckpointError(f"{p}: {e}") from None


class HFTextTokenizer(_OneFileTextTokenizer):
    """A `tokenizer.json` through the `tokenizers` package. `vocab_size`: the model's text id range,
    at least the tokenizer's (models pad their embedding beyond it, e.g. Qwen2's 151,936 rows for
    151,665 tokens); None: the tokenizer's own, its largest id + 1."""

    type_name = "text-hf-tokenizer"
    file_name = TOKENIZER_JSON

    def __init__(self, tokenizer_json: bytes, vocab_size: int | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        self._data = bytes(tokenizer_json)
        try:
            self.tk = HFTokenizer.from_str(self._data.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception types for malformed files
            raise CheckpointError(f"not a valid tokenizer.json ({str(e).splitlines()[0][:200]})") from None
        own = max(self.tk.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        if vocab_size is not None and vocab_size < own:
            raise CheckpointError(f"tokenizer.json has ids up to {own - 1}, beyond the vocab_size {vocab_size}")
        self._vocab_size = own if vocab_size is None else vocab_size

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"HFTextTokenizer.encode expects a str, got {type(text).__name__}")
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        """The id of a token string (e.g. "<|begin_of_text|>"), None if it has none."""
        return self.tk.token_to_id(token)

    @property
    def tokenizer_json(self) -> bytes:
        return self._data

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @classmethod
    def _from_saved(cls, path: Path, cfg: dict) -> "HFTextTokenizer":
        return cls.from_file(path, vocab_size=cfg.get("vocab_size"))

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> "HFTextTokenizer":
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"tokenizer file not found: {p}")
        try:
            return cls(p.read_bytes(), vocab_size)
        except CheckpointError as e:
            raise CheckpointError(f"{p}: {e}") from None


# ---------------------------------------------------------------- CLI handlers
def train_cli(args) -> int:
    import time

    t0 = time.perf_counter()
    tok = TextTokenizer.train(args.files, vocab_size=args.vocab_size)
    out = tok.save_pretrained(args.out)
    print(f"trained {tok.vocab_size}-piece BPE in {time.perf_counter() - t0:.1f}s -> {out}")
    return 0


def encode_cli(args) -> int:
    tok = TextTokenizer.from_pretrained(args.tokenizer)
    ids = tok.encode(args.text)
    print(" ".join(map(str, ids)))
    return 0
