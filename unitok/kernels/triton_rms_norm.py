"""Fused RMSNorm in Triton, forward and backward.

y = x * r * w with r = 1 / sqrt(mean(x**2) + eps), all in fp32, y in x's dtype.
Forward: one program per row, saves r (N,) fp32 for the backward.
Backward: each program walks a contiguous block of rows, writes dx row by row and keeps a
partial sum of dy * x * r for dw in registers; the (programs, D) partials are summed in torch.

    dx = r * g - x * r**3 * mean(g * x),   g = dy * w
"""

from __future__ import annotations

import torch

from unitok.kernels._triton import INTERPRET, check_device, tl, triton


@triton.jit
def _rms_fwd(X, W, Y, R, stride_x, stride_y, D, eps, BLOCK_D: tl.constexpr, HAS_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    x = tl.load(X + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
    y = x * r
    if HAS_W:
        y = y * tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(R + row, r)


@triton.jit
def _rms_bwd(DY, X, W, R, DX, DW, stride_dy, stride_x, stride_dx, N, D, rows_per_program,
             BLOCK_D: tl.constexpr, HAS_W: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    if HAS_W:
        w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid.to(tl.int64) * rows_per_program  # int64 row offsets: N * D may exceed 2**31
    end = tl.minimum(start + rows_per_program, N)
    for row in range(start, end):
        x = tl.load(X + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + offs, mask=ok, other=0.0).to(tl.float32)
        r = tl.load(R + row)
        g = dy * w if HAS_W else dy
        dx = r * g - x * (r * r * r) * (tl.sum(g * x, 0) / D)
        tl.store(DX + row * stride_dx + offs, dx.to(DX.dtype.element_ty), mask=ok)
        if HAS_W:
            dw += dy * x * r
    if HAS_W:
        tl.store(DW + pid * D + offs, dw, mask=ok)


def _block_d(D: int) -> int:
    return triton.next_power_of_2(D)


def _warps(block_d: int) -> int:
    return 4 if block_d <= 2048 else 8 if block_d <= 8192 else 16


def _programs(N: int, device) -> int:
    """Backward programs: one per SM on a GPU (few partial dw rows), 4 in the interpreter."""
    sms = 4 if INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(N, sms))


class RMSNorm(torch.autograd.Function):
    """apply(x, weight, eps) with x (..., D), weight (D,) or None."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        check_device(x)
        shape = x.shape
        D = shape[-1]
        x2 = x.reshape(-1, D)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        N = x2.shape[0]
        y = torch.empty(N, D, device=x.device, dtype=x.dtype)
        r = torch.empty(N, device=x.device, dtype=torch.float32)
        bd = _block_d(D)
        _rms_fwd[(N,)](x2, weight if weight is not None else x2, y, r, x2.stride(0), y.stride(0), D, float(eps),
                       BLOCK_D=bd, HAS_W=weight is not None, num_warps=_warps(bd))
        ctx.save_for_backward(x2, weight, r)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, r = ctx.saved_tensors
        N, D = x2.shape
        dy2 = dy.reshape(N, D)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty_like(x2)
        P = _programs(N, x2.device)
        rows = triton.cdiv(N, P)
        P = triton.cdiv(N, rows)
        dw = torch.empty(P, D, device=x2.device, dtype=torch.float32) if weight is not None else None
        bd = _block_d(D)
        _rms_bwd[(P,)](dy2, x2, weight if weight is not None else x2, r, dx, dw if dw is not None else r,
                       dy2.stride(0), x2.stride(0), dx.stride(0), N, D, rows,
                       BLOCK_D=bd, HAS_W=weight is not None, num_warps=_warps(bd))
        dweight = dw.sum(0).to(weight.dtype) if weight is not None else None
        return dx.view(ctx.shape), dweight, None


rms_norm_apply = RMSNorm.apply


@torch.compiler.disable  # a graph break: launches, autotuning and the id check stay eager
def rms_norm_triton(x, weight=None, eps: float = 1e-6):
    return rms_norm_apply(x, weight, eps)


__all__ = ["rms_norm_triton", "RMSNorm", "rms_norm_apply"]
