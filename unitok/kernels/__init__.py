"""Fused kernels and the attention dispatcher.

`attention(q, k, v, ...)` is what the model calls; `backend` picks the
implementation ("sdpa": torch reference, always available).
"""

from __future__ import annotations

from unitok.kernels.reference import attention_mask, attention_reference, linear_cross_entropy_reference

BACKENDS = ("sdpa",)
CE_BACKENDS = ("torch",)


def attention(q, k, v, *, causal: bool = True, doc_ids=None, span_ids=None, scale=None, backend: str = "sdpa"):
    """Multi-head attention with GQA, causal, document and bidirectional-span masking.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D), Hq % Hkv == 0; doc_ids/span_ids: (B, T) ints.
    Returns (B, Hq, T, D).
    """
    if backend == "sdpa":
        return attention_reference(q, k, v, causal=causal, doc_ids=doc_ids, span_ids=span_ids, scale=scale)
    raise ValueError(f"unknown attention backend {backend!r}; available: {', '.join(BACKENDS)}")


def linear_cross_entropy(hidden, weight, targets, *, ignore_index: int = -100, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, reduction: str = "mean", backend: str = "torch"):
    """Cross-entropy of `hidden @ weight.T` against `targets` (+ optional z-loss).

    hidden: (N, D); weight: (V, D); targets: (N,). "torch" is the unfused reference.
    """
    if backend == "torch":
        return linear_cross_entropy_reference(hidden, weight, targets, ignore_index=ignore_index,
                                              label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction)
    raise ValueError(f"unknown cross-entropy backend {backend!r}; available: {', '.join(CE_BACKENDS)}")


__all__ = ["attention", "attention_mask", "attention_reference", "linear_cross_entropy",
           "linear_cross_entropy_reference", "BACKENDS", "CE_BACKENDS"]
