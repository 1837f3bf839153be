"""Classifier-free guidance: the unconditional stream, built by the rule training used to drop conditions.

The unified trainer (`unitok.training.unified`, `cond_dropout`) removes, per document at that rate,
the text right before each media span (`unitok.data.packed.drop_conditions`; <bos> kept). So the
model has learnt each span both after its condition and without it, and the unconditional prompt
of a request is its conditional prompt with that same rule applied:

    [<bos>, "a red square", <boi>, <size:8>, <size:8>]  ->  [<bos>, <boi>, <size:8>, <size:8>]

The sampler (`generate(..., cfg_scale=3.0)`) runs both streams as one batch of 2B rows and, inside
image / video / audio spans only, samples from uncond + scale * (cond - uncond); when a span opens
during generation it rebuilds that row's unconditional stream by the rule. The rate is recorded in
the checkpoint (`state.json` -> `task.cond_dropout`); a model trained without condition dropout
never saw the unconditional stream, so guidance is refused there.
"""

from __future__ import annotations

import numpy as np

from unitok.errors import ConfigError
from unitok.vocab import Modality

__all__ = ["modalities", "unconditional_prompt", "condition_dropout", "check_guidance"]


def modalities(ids, vocab) -> np.ndarray:
    """(N,) Modality of each id as `UnifiedVocab.pack` assigns it: a span's begin marker, header,
    codes and end marker take the span's modality; everything else (text, <bos>, <eos>) is TEXT.
    A span still open at the end (a prompt that ends inside one) runs to the end."""
    begin = {b: (e, Modality[m.upper()]) for m, (b, e) in vocab.marker_ids.items()}
    out = np.full(len(ids), int(Modality.TEXT), np.int64)
    end = None
    for i, t in enumerate(int(t) for t in ids):
        if end is None and t in begin:
            end, m = begin[t]
        if end is not None:
            out[i] = int(m)
            if t == end:
                end = None
    return out


def unconditional_prompt(ids, vocab) -> list[int]:
    """The unconditional counterpart of a prompt: the text right before each media span removed, by
    the function the trainer's condition dropout calls. A prompt without a media span is unchanged
    (its unconditional stream is rebuilt when the sampled span opens)."""
    from unitok.data.packed import drop_conditions

    arr = np.asarray([int(t) for t in ids], np.int64)
    return drop_conditions(arr, modalities(arr, vocab))[0].tolist()


def condition_dropout(state) -> float | None:
    """The condition-dropout rate a checkpoint was trained with (`state.json` -> `task.cond_dropout`),
    or None where it is not recorded (text LMs, older runs). `state`: the state dict, or anything with
    a `.state` (what `unitok.checkpoint.load_model` returns)."""
    state = getattr(state, "state", state) or {}
    task = state.get("task") if isinstance(state, dict) else None
    rate = task.get("cond_dropout") if isinstance(task, dict) else None
    return None if rate is None else float(rate)


def check_guidance(scale: float, cond_dropout: float | None) -> None:
    """Refuse a guidance scale the model cannot support (one line, ConfigError): negative scales, and
    any scale other than 1 for a model trained with cond_dropout 0 (it never saw the unconditional
    stream). Unrecorded (None) is allowed."""
    if scale < 0:
        raise ConfigError(f"guidance scale {scale} must be >= 0 (1 = off)")
    if scale != 1 and cond_dropout == 0:
        raise ConfigError(f"guidance scale {scale} needs a model trained with condition dropout; this "
                          "checkpoint has task.cond_dropout 0 (use a scale of 1)")
