"""Fused attention in Triton (flash-attention 2 style), forward and backward.

Masks: causal, document masking for packed sequences, bidirectional image spans
(prefix-LM blocks) and any mix of them, with the exact semantics of
`reference.attention_mask`, given that every document and every nonzero span is
one contiguous run of positions (what packing produces; checked on entry).
Under that condition the keys a query i may see form one interval
[lo(i), hi(i)] and the queries that may see key j form one interval
[qlo(j), qhi(j)]. `mask_bounds` computes the four (B, T) int32 vectors in torch;
the kernels then need no ids at all:

    allowed(i, j)  <=>  lo(i) <= j <= hi(i)  <=>  qlo(j) <= i <= qhi(j)

A query tile visits key tiles in [min lo, max hi] only (the causal / document
tile skip, extended to the end of an image span), and tiles inside
[max lo, min hi] run without any mask. The backward walks the same way over
query tiles for each key tile.

Kernels: `_attn_fwd` (online softmax, saves the log-sum-exp in base 2),
`_attn_bwd_dkdv` (one program per key tile and kv head; loops over the query
heads of its GQA group, so dK/dV need no atomics and no reduction afterwards),
`_attn_bwd_dq` (one program per query tile and head), after `_attn_bwd_delta`
(delta = rowsum(dO * O) in fp32). Inputs bf16/fp16 (fp32 works too); accumulation in fp32.
Head dims: powers of two from 16 to 128 (64 and 128 are the tuned ones).
"""

from __future__ import annotations

import math

import torch

from unitok.kernels import TRITON_HEAD_DIMS as HEAD_DIMS
from unitok.kernels._triton import INTERPRET, SMEM_LIMIT, check_device, is_pow2, tl, triton

LOG2E = 1.4426950408889634
MASKED = tl.constexpr(-1.0e30)  # finite "minus infinity": a fully masked tile never produces inf - inf = NaN


# --------------------------------------------------------------------------- masks -> intervals
def _run_start(ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> index of the first position of the run each position belongs to."""
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=1).values


def _run_end(ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> index of the last position of the run each position belongs to."""
    T = ids.shape[1]
    return (T - 1) - _run_start(ids.flip(1)).flip(1)


def check_contiguous(ids: torch.Tensor, *, ignore_zero: bool = False, within=None, name: str = "ids") -> None:
    """Raise ValueError unless every id value (but 0 if ignore_zero) forms one contiguous run per row
    (per document when `within` (B, T) document ids are given: spans may be numbered per document)."""
    ids = ids.long()
    key = ids if within is None else within.long() * (1 << 32) + ids  # (document, id) pairs
    skip = ids == 0 if ignore_zero else torch.zeros_like(ids, dtype=torch.bool)
    key = key.masked_fill(skip, torch.iinfo(torch.int64).min)  # all skipped positions: one sentinel value
    starts = torch.ones_like(key, dtype=torch.bool)
    starts[:, 1:] = key[:, 1:] != key[:, :-1]
    srt = key.sort(dim=1).values
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    runs = (starts & ~skip).sum(1)
    distinct = first.sum(1) - skip.any(1).long()
    if not torch.equal(runs, distinct):  # one host sync
        raise ValueError(f"the triton attention backend needs each value of {name} to be one contiguous run of "
                         f"positions{' within each document' if within is not None else ''}")


def mask_bounds(B: int, T: int, *, causal: bool, doc_ids=None, span_ids=None, device=None, check: bool = True):
    """Interval form of the mask: (lo, hi, qlo, qhi), each (B or 1, T) int32, all bounds inclusive."""
    pos = torch.arange(T, device=device).unsqueeze(0)  # (1, T)
    if doc_ids is not None:
        if check:
            check_contiguous(doc_ids, name="doc_ids")
        d_start, d_end = _run_start(doc_ids), _run_end(doc_ids)  # (B, T)
    else:
        d_start, d_end = torch.zeros_like(pos), torch.full_like(pos, T - 1)
    if not causal:  # span blocks change nothing: the whole document is visible already
        lo, hi, qlo, qhi = d_start, d_end, d_start, d_end
    else:
        hi, qlo = pos, pos
        if span_ids is not None:
            if check:
                check_contiguous(span_ids, ignore_zero=True, within=doc_ids, name="span_ids")
            in_span = span_ids != 0
            hi = torch.where(in_span, torch.maximum(pos, _run_end(span_ids)), pos)  # keys up to the span's end
            qlo = torch.where(in_span, _run_start(span_ids), pos)  # queries from the span's start
        lo, hi = d_start, torch.minimum(hi, d_end)
        qlo, qhi = torch.maximum(qlo, d_start), d_end
    return tuple(x.to(torch.int32).contiguous() for x in torch.broadcast_tensors(lo, hi, qlo, qhi))


# --------------------------------------------------------------------------- kernels
@triton.jit
def _tile_range(lo_ptr, hi_ptr, offs, T, BLOCK: tl.constexpr):
    """For the rows `offs` with inclusive intervals [lo, hi] over the other axis: the loop bounds
    start (aligned), full_start, full_end (aligned, mask-free in between), end (exclusive)."""
    ok = offs < T
    lo = tl.load(lo_ptr + offs, mask=ok, other=T)
    hi = tl.load(hi_ptr + offs, mask=ok, other=-1)
    start = (tl.min(lo, 0) // BLOCK) * BLOCK
    end = tl.max(hi, 0) + 1
    fs = tl.cdiv(tl.max(tl.where(ok, lo, 0), 0), BLOCK) * BLOCK
    fe = ((tl.min(tl.where(ok, hi, T), 0) + 1) // BLOCK) * BLOCK
    empty = fs >= fe
    fs = tl.where(empty, start, fs)
    fe = tl.where(empty, start, fe)
    return lo, hi, start, fs, fe, end


@triton.jit
def _fwd_loop(acc, l_i, m_i, q, k_base, v_base, stride_kvt, offs_m, offs_d, lo, hi, start, end, T, qk_scale,
              BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        # One offset tile for k and v (the launcher gives them the same time stride): a second one costs
        # BLOCK_N * HEAD_DIM / threads registers and made six configs spill on sm_90 (fwd 128x32 and
        # dq 64x64 at D = 128).
        kv_off = offs_n[:, None] * stride_kvt + offs_d[None, :]
        if MASK:  # rows beyond T are excluded by `allowed` (hi <= T - 1)
            k = tl.load(k_base + kv_off, mask=(offs_n < T)[:, None], other=0.0)
        else:
            k = tl.load(k_base + kv_off)
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASK:
            allowed = (offs_n[None, :] >= lo[:, None]) & (offs_n[None, :] <= hi[:, None])
            qk = tl.where(allowed, qk, MASKED)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK:
            v = tl.load(v_base + kv_off, mask=(offs_n < T)[:, None], other=0.0)
        else:
            v = tl.load(v_base + kv_off)
        if UPCAST:
            v = v.to(tl.float32)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, LO, HI,
              sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, s_bound_b,
              H, T, qk_scale,
              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              UPCAST: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest (last, under causal) query tiles first
    pid_bh = tl.program_id(1).to(tl.int64)  # int64 base offsets: B*H*T*D may exceed 2**31
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    lo, hi, start, fs, fe, end = _tile_range(LO + b * s_bound_b, HI + b * s_bound_b, offs_m, T, BLOCK_N)

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, skt, offs_m, offs_d, lo, hi, start, fs, T, qk_scale,
                              BLOCK_N, True, UPCAST)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, skt, offs_m, offs_d, lo, hi, fs, fe, T, qk_scale,
                              BLOCK_N, False, UPCAST)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, skt, offs_m, offs_d, lo, hi, fe, end, T, qk_scale,
                              BLOCK_N, True, UPCAST)
    acc = acc / l_i[:, None]
    tl.store(LSE + pid_bh * T + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=row_ok[:, None])


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, sob, soh, sot, sdob, sdoh, sdot, H, T,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) in fp32, (B, H, T): the softmax-backward correction term."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (offs_m < T)[:, None]
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _bwd_dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n, offs_d,
                   qlo, qhi, start, end, T, qk_scale,
                   BLOCK_M: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr):
    for start_m in range(start, end, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if MASK:
            ok = offs_m < T
            q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=ok[:, None], other=0.0)
            do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=ok[:, None], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=ok, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=ok, other=0.0)
        else:
            q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :])
            do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :])
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        qkT = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M)
        if MASK:
            allowed = (offs_m[None, :] >= qlo[:, None]) & (offs_m[None, :] <= qhi[:, None])
            qkT = tl.where(allowed, qkT, MASKED)
        pT = tl.math.exp2(qkT - lse[None, :])
        dv = tl.dot(pT.to(do.dtype), do, dv)
        dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, QLO, QHI,
                   sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot, s_bound_b,
                   H, HKV, T, qk_scale, sm_scale,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   UPCAST: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # over B * HKV; int64 base offsets (B*H*T*D may exceed 2**31)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < T
    qlo, qhi, start, fs, fe, end = _tile_range(QLO + b * s_bound_b, QHI + b * s_bound_b, offs_n, T, BLOCK_M)

    kv_mask = col_ok[:, None]
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for g in range(GROUP):  # the query heads sharing this kv head
        h = hk * GROUP + g
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        lse_base = LSE + (b * H + h) * T
        delta_base = DELTA + (b * H + h) * T
        dk, dv = _bwd_dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqt, sdot, offs_n, offs_d,
                                qlo, qhi, start, fs, T, qk_scale, BLOCK_M, True, UPCAST)
        dk, dv = _bwd_dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqt, sdot, offs_n, offs_d,
                                qlo, qhi, fs, fe, T, qk_scale, BLOCK_M, False, UPCAST)
        dk, dv = _bwd_dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqt, sdot, offs_n, offs_d,
                                qlo, qhi, fe, end, T, qk_scale, BLOCK_M, True, UPCAST)
    # DK, DV are contiguous (B, HKV, T, D)
    out = (pid_bh * T + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_kvt, offs_m, offs_d, lo, hi, start, end, T, qk_scale,
                 BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr):
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_off = offs_n[:, None] * stride_kvt + offs_d[None, :]  # k, v: same time stride (see _fwd_loop)
        if MASK:
            ok = (offs_n < T)[:, None]
            k = tl.load(k_base + kv_off, mask=ok, other=0.0)
            v = tl.load(v_base + kv_off, mask=ok, other=0.0)
        else:
            k = tl.load(k_base + kv_off)
            v = tl.load(v_base + kv_off)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        if MASK:
            allowed = (offs_n[None, :] >= lo[:, None]) & (offs_n[None, :] <= hi[:, None])
            qk = tl.where(allowed, qk, MASKED)
        p = tl.math.exp2(qk - lse[:, None])
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, LO, HI,
                 sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot, s_bound_b,
                 H, T, qk_scale, sm_scale,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 UPCAST: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest (last, under causal) query tiles first
    pid_bh = tl.program_id(1).to(tl.int64)  # int64 base offsets: B*H*T*D may exceed 2**31
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    lo, hi, start, fs, fe, end = _tile_range(LO + b * s_bound_b, HI + b * s_bound_b, offs_m, T, BLOCK_N)

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _bwd_dq_loop(dq, q, do, lse, delta, k_base, v_base, skt, offs_m, offs_d, lo, hi, start, fs, T, qk_scale,
                      BLOCK_N, True, UPCAST)
    dq = _bwd_dq_loop(dq, q, do, lse, delta, k_base, v_base, skt, offs_m, offs_d, lo, hi, fs, fe, T, qk_scale,
                      BLOCK_N, False, UPCAST)
    dq = _bwd_dq_loop(dq, q, do, lse, delta, k_base, v_base, skt, offs_m, offs_d, lo, hi, fe, end, T, qk_scale,
                      BLOCK_N, True, UPCAST)
    # DQ is contiguous (B, H, T, D)
    tl.store(DQ + (pid_bh * T + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# --------------------------------------------------------------------------- launch configurations
def smem_bytes(kernel: str, block_m: int, block_n: int, head_dim: int, num_stages: int, elt: int = 2) -> int:
    """Shared memory of a config: resident tiles + num_stages buffers of the streamed ones.

    Matches the sm_90 cubins `python -m unitok.kernels.aot --all` builds (exactly for fwd and dq,
    within 1% above for dkdv); the probabilities stay in registers (wgmma takes A from registers).
    """
    if kernel == "fwd":  # q resident; k, v streamed
        return elt * (block_m * head_dim + num_stages * 2 * block_n * head_dim)
    if kernel == "dkdv":  # k, v resident; q, do streamed with their lse and delta rows (fp32)
        return elt * (2 * block_n * head_dim + num_stages * 2 * block_m * head_dim) + num_stages * 2 * block_m * 4
    if kernel == "dq":  # q, do resident; k, v streamed
        return elt * (2 * block_m * head_dim + num_stages * 2 * block_n * head_dim)
    raise ValueError(kernel)


def _blocks(kernel: str):
    if kernel == "dkdv":  # (BLOCK_M = query tile streamed, BLOCK_N = resident key tile)
        return [(32, 128), (64, 128), (32, 64), (64, 64)]
    return [(128, 64), (128, 128), (64, 64), (128, 32), (64, 32)]  # fwd, dq: resident query tile first


def acc_per_thread(kernel: str, block_m: int, block_n: int, head_dim: int, num_warps: int) -> float:
    """fp32 accumulator elements each thread holds: accumulators plus the score tiles of one step."""
    if kernel == "fwd":  # acc (M, D) + scores/probabilities (M, N)
        n = block_m * head_dim + block_m * block_n
    elif kernel == "dq":  # dq (M, D) + p and dp (M, N)
        n = block_m * head_dim + 2 * block_m * block_n
    else:  # dkdv: dk, dv (N, D) + pT and dpT (N, M)
        n = 2 * block_n * head_dim + 2 * block_m * block_n
    return n / (32 * num_warps)


def spills(kernel: str, block_m: int, block_n: int, head_dim: int, num_warps: int) -> bool:
    """Predicted register spill. Calibrated on the sm_90 sweep (`python -m unitok.kernels.aot --all`,
    docs/log/kernels.md): every config above 160 fp32 accumulator elements per thread spilled
    (48 to 5632 bytes) and none at or below, but for a 4-8 byte spill of dkdv 32x64 at D=128."""
    return acc_per_thread(kernel, block_m, block_n, head_dim, num_warps) > 160


def configs(kernel: str, head_dim: int) -> list:
    """GPU autotune configs for one kernel and head dim: no predicted spills, fits shared memory.

    4 warps where the tiles fit in their registers, 8 warps for 128-wide tiles or where 4 would
    spill; 2-3 pipeline stages, also 4 when the streamed tile is small."""
    out = []
    for bm, bn in _blocks(kernel):
        streamed = bm if kernel == "dkdv" else bn
        for warps in (4, 8):
            if spills(kernel, bm, bn, head_dim, warps):
                continue
            if warps == 8 and max(bm, bn) < 128 and not spills(kernel, bm, bn, head_dim, 4):
                continue  # small tiles: 8 warps only when 4 would spill
            for stages in (2, 3, 4) if streamed <= 64 else (2, 3):
                if smem_bytes(kernel, bm, bn, head_dim, stages) <= SMEM_LIMIT:
                    out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    return out


DELTA_BLOCK = 64  # rows per program of the delta kernel (no dot: any power of two works)

# Fixed tiles for the interpreter (no autotuning there): small, so tests see several tiles.
INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}

_TUNED: dict = {}


def _kernel(kernel: str, head_dim: int):
    """The autotuned kernel (GPU) for `kernel` and `head_dim`, created once."""
    key = (kernel, head_dim)
    if key not in _TUNED:
        fn = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq}[kernel]
        _TUNED[key] = triton.autotune(configs=configs(kernel, head_dim), key=["T", "GROUP"])(fn)
    return _TUNED[key]


def _launch(kernel: str, head_dim: int, grid_n: int, grid_bh: int, args, meta: dict, blocks: dict | None):
    axis = "BLOCK_N" if kernel == "dkdv" else "BLOCK_M"  # the tile each program owns
    if blocks is None and not INTERPRET:
        fn = _kernel(kernel, head_dim)
        fn[lambda m: (triton.cdiv(grid_n, m[axis]), grid_bh)](*args, **meta)
        return
    blocks = dict(blocks or INTERPRET_BLOCKS)
    fn = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq}[kernel]
    extra = {k: blocks.pop(k) for k in ("num_warps", "num_stages") if k in blocks}
    fn[(triton.cdiv(grid_n, blocks[axis]), grid_bh)](*args, **meta, **blocks, **extra)


# --------------------------------------------------------------------------- launchers
def _check_inputs(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (B, H, T, D)")
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (T, D) or H % k.shape[1]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype (got {q.dtype}, {k.dtype}, {v.dtype})")
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim {D} not supported by the triton backend (supported: {HEAD_DIMS})")
    check_device(q, k, v)


def _last_contig(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _kv_layout(k, v):
    """k, v with unit last stride and one time stride (the forward and dQ kernels step both with it)."""
    k, v = _last_contig(k), _last_contig(v)
    if k.stride(2) != v.stride(2):
        k, v = k.contiguous(), v.contiguous()
    return k, v


def attention_forward(q, k, v, bounds, scale: float, blocks: dict | None = None):
    """-> o (B, H, T, D) in q's dtype, lse (B, H, T) fp32 in log2 units.
    k, v as `_kv_layout` returns them (FlashAttention.forward arranges that, once for both passes)."""
    B, H, T, D = q.shape
    HKV = k.shape[1]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    lo, hi = bounds[0], bounds[1]
    args = (q, k, v, o, lse, lo, hi, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            lo.stride(0) if lo.shape[0] > 1 else 0, H, T, scale * LOG2E)
    meta = dict(GROUP=H // HKV, HEAD_DIM=D, UPCAST=INTERPRET and q.dtype == torch.bfloat16)
    _launch("fwd", D, T, B * H, args, meta, blocks)
    return o, lse


def attention_backward(do, q, k, v, o, lse, bounds, scale: float, blocks: dict | None = None):
    """-> dq, dk, dv in the dtypes of q, k, v (dk, dv summed over each GQA group); k, v as in forward."""
    B, H, T, D = q.shape
    HKV = k.shape[1]
    do = _last_contig(do)
    delta = torch.empty(B, H, T, device=q.device, dtype=torch.float32)  # rowsum(dO * O)
    bm = 16 if INTERPRET else DELTA_BLOCK
    _attn_bwd_delta[(triton.cdiv(T, bm), B * H)](o, do, delta, *o.stride()[:3], *do.stride()[:3], H, T,
                                                  HEAD_DIM=D, BLOCK_M=bm)
    dq = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
    dk = torch.empty(B, HKV, T, D, device=q.device, dtype=k.dtype)
    dv = torch.empty(B, HKV, T, D, device=q.device, dtype=v.dtype)
    lo, hi, qlo, qhi = bounds
    sb = lo.stride(0) if lo.shape[0] > 1 else 0
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], sb)
    meta = dict(GROUP=H // HKV, HEAD_DIM=D, UPCAST=INTERPRET and q.dtype == torch.bfloat16)
    _launch("dkdv", D, T, B * HKV, (q, k, v, do, dk, dv, lse, delta, qlo, qhi, *strides, H, HKV, T,
                                    scale * LOG2E, scale), meta, blocks)
    _launch("dq", D, T, B * H, (q, k, v, do, dq, lse, delta, lo, hi, *strides, H, T, scale * LOG2E, scale),
            meta, blocks)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Autograd wrapper: apply(q, k, v, lo, hi, qlo, qhi, scale, blocks)."""

    @staticmethod
    def forward(ctx, q, k, v, lo, hi, qlo, qhi, scale, blocks):
        q, k, v = _last_contig(q), *_kv_layout(k, v)
        o, lse = attention_forward(q, k, v, (lo, hi), scale, blocks)
        ctx.save_for_backward(q, k, v, o, lse, lo, hi, qlo, qhi)
        ctx.scale, ctx.blocks = scale, blocks
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, lo, hi, qlo, qhi = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, o, lse, (lo, hi, qlo, qhi), ctx.scale, ctx.blocks)
        return dq, dk, dv, None, None, None, None, None, None


flash_attention_apply = FlashAttention.apply


@torch.compiler.disable  # a graph break: launches, autotuning and the id check stay eager
def flash_attention(q, k, v, *, causal: bool = True, doc_ids=None, span_ids=None, scale: float | None = None,
                    blocks: dict | None = None, check: bool = True):
    """Same contract as `reference.attention_reference`. `blocks` forces tile sizes (else autotuned on GPU)."""
    _check_inputs(q, k, v)
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    lo, hi, qlo, qhi = mask_bounds(B, T, causal=causal, doc_ids=doc_ids, span_ids=span_ids, device=q.device,
                                   check=check)
    return flash_attention_apply(q, k, v, lo, hi, qlo, qhi, scale, blocks)


__all__ = ["flash_attention", "FlashAttention", "flash_attention_apply", "mask_bounds", "check_contiguous",
           "configs", "smem_bytes", "INTERPRET_BLOCKS", "HEAD_DIMS", "is_pow2"]
