"""Fused kernels and the attention dispatcher.

`attention(q, k, v, ...)` is what the model calls; `backend` picks the
implementation ("sdpa": torch reference, always available).
"""

from __future__ import annotations

from unitok.kernels.reference import attention_mask, attention_reference

BACKENDS = ("sdpa",)


def attention(q, k, v, *, causal: bool = True, doc_ids=None, span_ids=None, scale=None, backend: str = "sdpa"):
    """Multi-head attention with GQA, causal, document and bidirectional-span masking.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D), Hq % Hkv == 0; doc_ids/span_ids: (B, T) ints.
    Returns (B, Hq, T, D).
    """
    if backend == "sdpa":
        return attention_reference(q, k, v, causal=causal, doc_ids=doc_ids, span_ids=span_ids, scale=scale)
    raise ValueError(f"unknown attention backend {backend!r}; available: {', '.join(BACKENDS)}")


__all__ = ["attention", "attention_mask", "attention_reference", "BACKENDS"]
