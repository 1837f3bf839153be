"""PyTorch references for the fused kernels (and the `sdpa` attention backend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(T: int, *, causal: bool = True, doc_ids=None, span_ids=None, device=None) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T, T), True where query i may attend to key j.

    causal:   j <= i
    doc_ids:  (B, T) ints; i and j must share a document (packed sequences)
    span_ids: (B, T) ints, 0 outside spans; i and j in the same nonzero span
              (e.g. one image) see each other in both directions (prefix-LM blocks)
    """
    if not causal and doc_ids is None and span_ids is None:
        return None
    i = torch.arange(T, device=device)
    mask = (i[None, :] <= i[:, None])[None] if causal else torch.ones(1, T, T, dtype=torch.bool, device=device)
    if span_ids is not None:
        same_span = (span_ids[:, :, None] == span_ids[:, None, :]) & (span_ids[:, :, None] != 0)
        mask = mask | same_span
    if doc_ids is not None:
        mask = mask & (doc_ids[:, :, None] == doc_ids[:, None, :])
    return mask[:, None]


def attention_reference(q, k, v, *, causal: bool = True, doc_ids=None, span_ids=None, scale: float | None = None):
    """q: (B, Hq, T, D); k, v: (B, Hkv, T, D) with Hq % Hkv == 0 -> (B, Hq, T, D)."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    if Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    mask = attention_mask(T, causal=causal, doc_ids=doc_ids, span_ids=span_ids, device=q.device)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if doc_ids is None and span_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def linear_cross_entropy_reference(
    hidden, weight, targets, *, ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0, reduction: str = "mean"
):
    """Unfused reference: logits = hidden @ weight.T, then cross-entropy (+ z-loss).

    hidden: (N, D); weight: (V, D); targets: (N,) ints (ignore_index skipped).
    z-loss adds `z_loss * logsumexp(logits)**2` per counted token (PaLM), which
    keeps the softmax normalizer near 1. Mean is over non-ignored tokens.
    Returns the loss (a scalar for "mean"/"sum", (N,) for "none").
    """
    logits = (hidden @ weight.t()).float()  # (N, V): this is what the fused kernel never materializes
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    valid = targets != ignore_index
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        loss = loss + z_loss * lse.pow(2) * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


def rms_norm_reference(x, weight=None, eps: float = 1e-6):
    """x: (..., D); weight: (D,) or None. Normalizes in fp32, returns x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)
