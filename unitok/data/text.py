"""Text data for language-model training: reading, splitting, tokenizing, random windows.

    text = read_text("input.txt")                  # DataError for missing, empty or non-UTF-8 files
    train, held = split_text(text, 0.1)            # last 10% of the characters held out
    tok = train_text_tokenizer(train, 2048, workdir)
    ids = encode_doc(tok, vocab, train)            # <bos> + text ids, int64
    windows = TextWindows(ids, batch_size=16, seq_len=128, seed=1)
    x, y = windows.next()                          # (B, T) inputs and targets
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from unitok.errors import DataError, require_file

__all__ = ["read_text", "split_text", "encode_doc", "train_text_tokenizer", "TextWindows"]


def read_text(path) -> str:
    p = require_file(path, "text file")
    try:
        t = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not t.strip():
        raise DataError(f"{p}: empty text file")
    return t


def split_text(t: str, eval_fraction: float) -> tuple[str, str]:
    """First (1 - f) of the characters for training, the rest held out."""
    n = int(len(t) * (1 - eval_fraction))
    return t[:n], t[n:]


def train_text_tokenizer(train_text: str, vocab_size: int, workdir: Path):
    """Train SentencePiece on the training text only (never the held-out text)."""
    from unitok.tokenizers.text import TextTokenizer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="tokenizer-train-", suffix=".txt", dir=workdir)  # private to this call
    f = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as w:
            w.write(train_text)
        return TextTokenizer.train([f], vocab_size=vocab_size)
    finally:
        f.unlink(missing_ok=True)


def encode_doc(tokenizer, vocab, t: str) -> np.ndarray:
    """<bos> + text ids, as int64. The text is one document."""
    return np.asarray([vocab.bos] + tokenizer.encode(t), dtype=np.int64)


class TextWindows:
    """Random windows of seq_len + 1 tokens of one long document. `next(world, rank)` draws the
    global batch from one seeded stream and returns this rank's slice, so any number of ranks sees
    the data of one process. The generator state is the data position."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        if len(ids) < seq_len + 2:
            raise DataError(f"training text has {len(ids)} tokens; need at least seq_len + 2 = {seq_len + 2}")
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        self.batch_size, self.seq_len = batch_size, seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, world: int = 1, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (self.batch_size,), generator=self.gen)
        n = self.batch_size // world
        idx = starts[rank * n:(rank + 1) * n, None] + torch.arange(self.seq_len + 1)  # (B, T+1)
        chunk = self.ids[idx]
        return chunk[:, :-1], chunk[:, 1:]  # inputs, targets: (B, T)
