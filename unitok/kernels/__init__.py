"""Fused kernels and their dispatchers.

Each op takes `backend=`:
- attention:            "sdpa" (torch reference), "flex" (PyTorch FlexAttention, a block mask that skips
                        masked blocks; fast only compiled), "triton" (fused flash attention), "auto"
- linear_cross_entropy: "torch" (unfused reference), "chunked" (pure torch, never holds all logits),
                        "triton" (fused kernel), "auto"
- rms_norm:             "torch" (reference), "triton" (fused kernel), "auto"

"auto" picks the Triton kernel for CUDA tensors it supports and falls back to torch otherwise
(never "flex": it is chosen by name, e.g. `model.attention=flex`).
"triton" always runs the kernel: on a machine without CUDA it runs in Triton's interpreter
(TRITON_INTERPRET=1, set automatically there; slow, for tests). The Triton modules are imported
only when a Triton backend is used, so importing unitok.kernels never imports triton.
"""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, and triton decorates its own helpers when it is
# first imported, which torch does behind the scenes (building an optimizer imports torch._dynamo, which
# imports triton). So the switch to the interpreter on a machine without CUDA happens here, on the first
# import of unitok.kernels (the model imports it), not when a kernel module is loaded. A user's value wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from unitok.kernels.reference import (attention_mask, attention_reference, linear_cross_entropy_reference,
                                      rms_norm_reference)

BACKENDS = ("sdpa", "flex", "triton", "auto")
CE_BACKENDS = ("torch", "chunked", "triton", "auto")
NORM_BACKENDS = ("torch", "triton", "auto")
TRITON_HEAD_DIMS = (16, 32, 64, 128)  # head dims the fused attention kernels are built for


def _triton_ok(*tensors) -> bool:
    """True when "auto" should use Triton: CUDA tensors and an importable triton."""
    if not all(t.is_cuda for t in tensors):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def attention(q, k, v, *, causal: bool = True, doc_ids=None, span_ids=None, scale=None, backend: str = "sdpa"):
    """Multi-head attention with GQA, causal, document and bidirectional-span masking.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D), Hq % Hkv == 0; doc_ids/span_ids: (B, T) ints.
    Returns (B, Hq, T, D). Semantics: `reference.attention_mask`. The triton backend needs every
    document and every nonzero span to be one contiguous run of positions (packing gives that).
    """
    if backend == "auto":
        half = q.dtype in (torch.float16, torch.bfloat16)
        backend = "triton" if _triton_ok(q) and half and q.shape[-1] in TRITON_HEAD_DIMS else "sdpa"
    if backend == "sdpa":
        return attention_reference(q, k, v, causal=causal, doc_ids=doc_ids, span_ids=span_ids, scale=scale)
    if backend == "flex":
        return flex_attention_masked(q, k, v, causal=causal, doc_ids=doc_ids, span_ids=span_ids, scale=scale)
    if backend == "triton":
        from unitok.kernels.triton_attention import flash_attention

        return flash_attention(q, k, v, causal=causal, doc_ids=doc_ids, span_ids=span_ids, scale=scale)
    raise ValueError(f"unknown attention backend {backend!r}; available: {', '.join(BACKENDS)}")


def flex_attention_masked(q, k, v, *, causal: bool = True, doc_ids=None, span_ids=None, scale=None):
    """The same mask through PyTorch's FlexAttention (a block mask built from doc_ids / span_ids; sparse
    blocks are skipped). Compiled under `run.compile`; eager elsewhere (correct, not fast)."""
    import warnings

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, _, T, _ = q.shape

    def mask_mod(b, h, qi, ki):
        ok = (ki <= qi) if causal else (ki >= 0)
        if span_ids is not None:
            ok = ok | ((span_ids[b, qi] == span_ids[b, ki]) & (span_ids[b, qi] != 0))
        if doc_ids is not None:
            ok = ok & (doc_ids[b, qi] == doc_ids[b, ki])
        return ok

    block = create_block_mask(mask_mod, B if (doc_ids is not None or span_ids is not None) else None, None, T, T,
                              device=q.device)
    with warnings.catch_warnings():  # "called without torch.compile": the eager path is the reference path
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def linear_cross_entropy(hidden, weight, targets, *, ignore_index: int = -100, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, reduction: str = "mean", backend: str = "torch"):
    """Cross-entropy of `hidden @ weight.T` against `targets` (+ optional z-loss).

    hidden: (N, D); weight: (V, D); targets: (N,). "torch" is the unfused reference; "chunked" and
    "triton" never materialize the (N, V) logits and compute the gradients of hidden and weight
    during the forward pass.
    """
    kw = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction)
    if backend == "auto":
        backend = "triton" if _triton_ok(hidden, weight) else "chunked"
    if backend == "torch":
        return linear_cross_entropy_reference(hidden, weight, targets, **kw)
    if backend == "chunked":
        from unitok.kernels.cross_entropy import linear_cross_entropy_chunked

        return linear_cross_entropy_chunked(hidden, weight, targets, **kw)
    if backend == "triton":
        from unitok.kernels.cross_entropy import linear_cross_entropy_triton

        return linear_cross_entropy_triton(hidden, weight, targets, **kw)
    raise ValueError(f"unknown cross-entropy backend {backend!r}; available: {', '.join(CE_BACKENDS)}")


def rms_norm(x, weight, eps: float = 1e-6, *, backend: str = "torch"):
    """y = x / sqrt(mean(x**2, -1) + eps) * weight, computed in fp32, returned in x's dtype.

    x: (..., D); weight: (D,) or None.
    """
    if backend == "auto":
        backend = "triton" if _triton_ok(x) else "torch"
    if backend == "torch":
        return rms_norm_reference(x, weight, eps)
    if backend == "triton":
        from unitok.kernels.triton_rms_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    raise ValueError(f"unknown rms_norm backend {backend!r}; available: {', '.join(NORM_BACKENDS)}")


__all__ = ["attention", "attention_mask", "attention_reference", "linear_cross_entropy",
           "linear_cross_entropy_reference", "rms_norm", "rms_norm_reference", "BACKENDS", "CE_BACKENDS",
           "NORM_BACKENDS", "TRITON_HEAD_DIMS"]
