"""Held-out scoring of a language model: total NLL of a token sequence with a sliding context."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["score_tokens"]


@torch.no_grad()
def score_tokens(model, ids: np.ndarray, window: int, stride: int | None = None,
                 batch_size: int = 16, max_tokens: int | None = None) -> tuple[float, int]:
    """Total NLL (nats) of ids[1:] given the tokens before them, with a sliding context.

    Windows of `window` tokens advance by `stride` (default window // 2); each
    window scores only targets no earlier window scored, so every target is
    counted once with between window - stride and window tokens of context
    (the first window's targets with less). Returns (total nats, targets scored).
    """
    stride = stride or max(1, window // 2)
    ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    N = len(ids)
    if N < 2:
        return 0.0, 0
    inputs, targets = [], []
    done = 0  # targets ids[1..done] are scored
    s = 0
    while done < N - 1:
        s = min(s, max(0, N - 1 - window))
        e = min(s + window, N - 1)  # inputs ids[s:e], targets ids[s+1:e+1]
        x = torch.zeros(window, dtype=torch.long)
        y = torch.full((window,), -100, dtype=torch.long)
        x[: e - s] = ids[s:e]
        tgt = ids[s + 1:e + 1].clone()
        tgt[: max(0, done - s)] = -100  # already scored by an earlier window
        y[: e - s] = tgt
        inputs.append(x)
        targets.append(y)
        done = e
        s += stride
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(inputs), batch_size):
        x, y = torch.stack(inputs[i:i + batch_size]), torch.stack(targets[i:i + batch_size])
        total += float(model(x, y, reduction="sum", z_loss=0.0))
        count += int((y != -100).sum())
    model.train(was_training)
    assert count == N - 1, (count, N)
    return total, count
