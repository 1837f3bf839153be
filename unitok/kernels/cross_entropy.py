"""Fused linear + cross-entropy for large vocabularies: the (N, V) logits never exist at once.

Tokens are processed in chunks of C rows. For each chunk: logits_c = h_c @ W.T (C, V) with one
GEMM, then loss and d(loss)/d(logits_c) in one pass over the chunk, then dh_c = g_c @ W and
dW += g_c.T @ h_c, and the chunk buffer is freed. dW accumulates in the weight's dtype (each GEMM
accumulates in fp32 inside; a bf16 dW is rounded once per chunk: about sqrt(chunks) * 2**-9
relative, 8 chunks at 8k tokens and a 128k vocabulary). An fp32 accumulator would double the
memory of the largest tensor left (V x D) and its read-modify-write per chunk. The gradients are computed
during the forward pass (the backward only scales them by the incoming scalar), so the logits GEMM
runs once; for reduction="none" the backward recomputes the chunks with per-token weights.

Two implementations of the per-chunk step:
- "chunked": torch ops in fp32 (works everywhere);
- "triton": `_ce_chunk_kernel`, one program per row, an online log-sum-exp over V tiles, then the
  gradient written in place into the logits buffer (in the GEMM's dtype: no fp32 copy of the chunk).

Loss per counted token (ignore_index skipped), matching `linear_cross_entropy_reference`:
    lse - (1 - eps) * x_t - eps * mean_j(x_j) + z_loss * lse**2
with eps the label smoothing; its gradient in x_j is
    softmax_j * (1 + 2 * z_loss * lse) - (1 - eps) * [j == t] - eps / V.
Targets must lie in [0, V) or equal ignore_index (not checked: that would need a host sync).
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 1 << 28  # target size of one chunk of logits: 256 MiB


def default_chunk(N: int, V: int, elt: int = 4) -> int:
    """Rows per chunk: a power of two with C * V * elt <= 256 MiB, between 16 and 4096 (and <= N).

    elt: bytes per logit in the chunk buffer (4 for the torch step's fp32 copy, 2 for the Triton
    step on bf16 logits: 1024 rows at V = 131,072, so the dW GEMM has K = 1024 and stays
    compute-bound on an H100)."""
    c = 16
    while c * 2 <= 4096 and c * 2 * V * elt <= CHUNK_BYTES:
        c *= 2
    return max(1, min(c, N))


# --------------------------------------------------------------------------- per-chunk step: torch
def _ce_chunk_torch(logits, targets, weight_tok, ignore_index: int, eps: float, z: float, grad: bool):
    """logits (C, V) any float dtype, used as scratch; weight_tok (C,) fp32 or None
    -> loss (C,) fp32, grad (C, V) fp32 or None. One (C, V) fp32 buffer: everything happens in place."""
    x = logits.float()  # the same tensor when the logits are fp32
    V = x.shape[1]
    valid = targets != ignore_index
    t = torch.where(valid, targets, 0).long()
    x_t = x.gather(1, t[:, None])[:, 0]
    mean = x.mean(1) if eps else None
    m = x.amax(1)
    p = x.sub_(m[:, None]).exp_()  # unnormalized softmax, in place (no logsumexp temporary)
    s = p.sum(1)
    lse = m + s.log()  # (C,)
    loss = lse - (1 - eps) * x_t + z * lse * lse
    if eps:
        loss = loss - eps * mean
    loss = torch.where(valid, loss, 0.0)
    if not grad:
        return loss, None
    g = p.mul_(((1 + 2 * z * lse) / s)[:, None])  # softmax * (1 + 2 z lse)
    g.scatter_add_(1, t[:, None], torch.full_like(x_t, -(1 - eps))[:, None])
    if eps:
        g.sub_(eps / V)
    g.mul_(torch.where(valid, weight_tok, 0.0)[:, None])
    return loss, g


# --------------------------------------------------------------------------- per-chunk step: Triton
try:  # the torch path works without triton (e.g. macOS)
    from unitok.kernels._triton import INTERPRET, check_device, tl, triton
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _ce_chunk_kernel(X, stride_x, TGT, WTOK, LOSS, V, ignore_index, eps, z,
                         BLOCK_V: tl.constexpr, GRAD: tl.constexpr):
        """One row of logits: loss, and (GRAD) d loss / d logits * weight written over the row."""
        row = tl.program_id(0).to(tl.int64)
        x_ptr = X + row * stride_x
        t = tl.load(TGT + row)
        valid = t != ignore_index
        m = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)  # per-lane running max and sum
        s = tl.zeros([BLOCK_V], dtype=tl.float32)
        sx = tl.zeros([BLOCK_V], dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            ok = offs < V
            x = tl.load(x_ptr + offs, mask=ok, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # lanes that saw only padding
            s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
            sx += tl.where(ok, x, 0.0)
            m = m_new
        m_row = tl.max(m, 0)
        lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))  # lanes with m = -inf have s = 0
        x_t = tl.load(x_ptr + tl.where(valid, t, 0)).to(tl.float32)
        loss = lse - (1.0 - eps) * x_t - eps * tl.sum(sx, 0) / V + z * lse * lse
        tl.store(LOSS + row, tl.where(valid, loss, 0.0))
        if GRAD:
            w = tl.where(valid, tl.load(WTOK + row), 0.0)
            scale = 1.0 + 2.0 * z * lse
            for start in range(0, V, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                ok = offs < V
                x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
                g = tl.exp(x - lse) * scale - eps / V - tl.where(offs == t, 1.0 - eps, 0.0)
                tl.store(x_ptr + offs, (g * w).to(X.dtype.element_ty), mask=ok)


# BLOCK_V per launch: large on a GPU (one row streams through registers), small in the interpreter.
def block_v(V: int) -> int:
    return min(64 if INTERPRET else 4096, triton.next_power_of_2(V))


def num_warps(bv: int) -> int:
    return 8 if bv >= 2048 else 4


def _ce_chunk_triton(logits, targets, weight_tok, ignore_index: int, eps: float, z: float, grad: bool):
    """Same contract as _ce_chunk_torch, but the gradient overwrites `logits` (returned as grad)."""
    if triton is None:
        raise RuntimeError("the triton cross-entropy backend needs triton; use backend='chunked'")
    check_device(logits)
    C, V = logits.shape
    assert logits.stride(1) == 1
    loss = torch.empty(C, device=logits.device, dtype=torch.float32)
    wt = weight_tok if weight_tok is not None else loss  # unread when grad is False
    bv = block_v(V)
    _ce_chunk_kernel[(C,)](logits, logits.stride(0), targets, wt, loss, V, ignore_index, float(eps), float(z),
                           BLOCK_V=bv, GRAD=grad, num_warps=num_warps(bv))
    return loss, (logits if grad else None)


# --------------------------------------------------------------------------- the chunked pass
def _chunked_pass(hidden, weight, targets, weight_tok, *, ignore_index, eps, z, need_h: bool, need_w: bool,
                  impl: str, chunk: int | None = None):
    """-> loss (N,) fp32, dh (N, D) in hidden's dtype or None, dW (V, D) in weight's dtype or None.

    weight_tok (N,) fp32: d(total loss)/d(loss_n) for each token (ignored tokens get 0 anyway).
    need_h / need_w: which gradients to compute (none: loss only).
    """
    grad = need_h or need_w
    N, D = hidden.shape
    V = weight.shape[0]
    step = _ce_chunk_triton if impl == "triton" else _ce_chunk_torch
    C = chunk or default_chunk(N, V, hidden.element_size() if impl == "triton" else 4)
    loss = torch.empty(N, device=hidden.device, dtype=torch.float32)
    dh = torch.empty_like(hidden) if need_h else None
    dw = torch.zeros(V, D, device=weight.device, dtype=weight.dtype) if need_w else None
    for a in range(0, N, C):
        h = hidden[a: a + C]  # (C, D)
        logits = h @ weight.t()  # (C, V) in the input dtype, fp32 accumulation inside the GEMM
        wt = weight_tok[a: a + C] if grad else None
        loss[a: a + C], g = step(logits, targets[a: a + C], wt, ignore_index, eps, z, grad)
        if grad:
            g = g.to(weight.dtype)
            if need_h:
                torch.mm(g, weight, out=dh[a: a + C])
            if need_w:  # one GEMM per chunk, fp32 inside, accumulated in the weight's dtype
                dw.addmm_(g.t(), h)
        del logits, g
    return loss, dh, dw


class LinearCrossEntropy(torch.autograd.Function):
    """apply(hidden, weight, targets, ignore_index, label_smoothing, z_loss, reduction, impl, chunk, grad_on).

    grad_on: torch.is_grad_enabled() of the caller; without it the forward computes no gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, eps, z, reduction, impl, chunk, grad_on):
        valid = targets != ignore_index
        kw = dict(ignore_index=ignore_index, eps=eps, z=z, impl=impl, chunk=chunk)
        ctx.reduction, ctx.kw, ctx.used = reduction, kw, False
        if reduction == "none":  # per-token upstream weights are known only in backward: recompute there
            loss, _, _ = _chunked_pass(hidden, weight, targets, None, need_h=False, need_w=False, **kw)
            ctx.save_for_backward(hidden, weight, targets)
            return loss
        wt = valid.float()
        if reduction == "mean":
            wt = wt / valid.sum().clamp(min=1)
        # needs_input_grad is True under no_grad too: check grad mode here (it is off inside forward)
        loss, dh, dw = _chunked_pass(hidden, weight, targets, wt, need_h=grad_on and ctx.needs_input_grad[0],
                                     need_w=grad_on and ctx.needs_input_grad[1], **kw)
        ctx.save_for_backward(dh, dw)
        return (loss * wt).sum() if reduction == "mean" else loss.sum()

    @staticmethod
    def backward(ctx, g):
        if ctx.reduction == "none":
            hidden, weight, targets = ctx.saved_tensors
            _, dh, dw = _chunked_pass(hidden, weight, targets, g.float().contiguous(), need_h=ctx.needs_input_grad[0],
                                      need_w=ctx.needs_input_grad[1], **ctx.kw)
        else:  # scale the gradients computed in forward in place (no second copy of dW)
            if ctx.used:
                raise RuntimeError("fused linear cross-entropy: backward can run only once (its gradients are scaled in place)")
            ctx.used = True
            dh, dw = ctx.saved_tensors
            if dh is not None:
                dh.mul_(g.to(dh.dtype))
            if dw is not None:
                dw.mul_(g.to(dw.dtype))
        return dh, dw, None, None, None, None, None, None, None, None


linear_cross_entropy_apply = LinearCrossEntropy.apply


@torch.compiler.disable  # a graph break: launches, autotuning and the id check stay eager
def _run(hidden, weight, targets, ignore_index, label_smoothing, z_loss, reduction, impl, chunk):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none (got {reduction!r})")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, D), weight (V, D), targets (N,); got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    return linear_cross_entropy_apply(hidden.contiguous(), weight.contiguous(), targets.contiguous(), ignore_index,
                                      float(label_smoothing), float(z_loss), reduction, impl, chunk,
                                      torch.is_grad_enabled())


def linear_cross_entropy_chunked(hidden, weight, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                                 reduction="mean", chunk: int | None = None):
    """Pure-torch chunked version (CPU and GPU)."""
    return _run(hidden, weight, targets, ignore_index, label_smoothing, z_loss, reduction, "torch", chunk)


def linear_cross_entropy_triton(hidden, weight, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                                reduction="mean", chunk: int | None = None):
    """Chunked GEMMs + the Triton per-chunk loss/gradient kernel."""
    return _run(hidden, weight, targets, ignore_index, label_smoothing, z_loss, reduction, "triton", chunk)


__all__ = ["linear_cross_entropy_chunked", "linear_cross_entropy_triton", "LinearCrossEntropy",
           "linear_cross_entropy_apply", "default_chunk", "block_v"]
