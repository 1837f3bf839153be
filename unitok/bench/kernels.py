"""The measuring functions of `unitok bench kernels` (its command: `unitok.apps.bench_kernels`): fused
kernels against torch.

On a GPU: TFLOP/s and peak memory of attention forward and forward+backward (ours vs. torch SDPA
flash / cuDNN / memory-efficient backends, FlexAttention with the same block mask, unfused torch
ops) over sequence lengths 1k-16k, head dims 64/128, causal and document-packed batches; fused
linear cross-entropy (128k vocabulary) and RMSNorm against their unfused references; plus
correctness at the benchmarked shapes. On CPU: the correctness checks (Triton interpreter, small
shapes) and the CPU peak-memory comparison of the chunked cross-entropy.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unitok.kernels import attention, attention_reference, linear_cross_entropy, rms_norm, rms_norm_reference
from unitok.kernels.reference import linear_cross_entropy_reference

TOKENS = 16384  # tokens per attention batch (B = TOKENS // T)
MODEL_DIM = 2048  # heads = MODEL_DIM // D


# --------------------------------------------------------------------------- shared helpers
def packed_doc_ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """(B, T) int32 contiguous documents with random lengths, mean about T / 8 (at least 128)."""
    gen = torch.Generator().manual_seed(seed)
    mean = max(128, T // 8)
    ids = torch.empty(B, T, dtype=torch.int32)
    for b in range(B):
        pos, d = 0, 0
        while pos < T:
            n = int(torch.randint(mean // 4, 2 * mean - mean // 4 + 1, (1,), generator=gen))
            ids[b, pos: pos + n] = d
            pos, d = pos + n, d + 1
    return ids


def allowed_pairs(T: int, causal: bool, doc_ids=None) -> int:
    """Number of (query, key) pairs the mask allows, summed over the batch (1 row if doc_ids is None)."""
    from unitok.kernels.triton_attention import mask_bounds

    lo, hi, _, _ = mask_bounds(1 if doc_ids is None else doc_ids.shape[0], T, causal=causal,
                               doc_ids=None if doc_ids is None else doc_ids.cpu(), device="cpu")
    return int((hi - lo + 1).sum())


def _maxdiff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


# --------------------------------------------------------------------------- correctness (CPU or GPU)
def correctness(device: str) -> dict:
    """Small-shape checks of every kernel against its reference (max |diff|, float64 reference)."""
    from unitok.kernels.triton_attention import flash_attention

    out = {}
    gen = torch.Generator().manual_seed(0)
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    doc = torch.tensor([[0] * 12 + [1] * 20 + [2] * 8]).to(device)
    span = torch.tensor([[0] * 14 + [1] * 9 + [0] * 5 + [2] * 7 + [0] * 5]).to(device)
    for name, (Hq, Hkv, T, D, causal, d, s) in {
        "attention causal T=17 D=64": (2, 2, 17, 64, True, None, None),
        "attention docs+spans GQA T=40 D=32": (4, 2, 40, 32, True, doc, span),
        "attention bidirectional docs T=40 D=32": (2, 2, 40, 32, False, doc, None),
        "attention causal T=17 D=128": (2, 1, 17, 128, True, None, None),
    }.items():
        q, k, v = (torch.randn(1, h, T, D, generator=gen).to(device, dt).requires_grad_() for h in (Hq, Hkv, Hkv))
        do = torch.randn(1, Hq, T, D, generator=gen).to(device, dt)
        o = flash_attention(q, k, v, causal=causal, doc_ids=d, span_ids=s)
        o.backward(do)
        r = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = attention_reference(*r, causal=causal, doc_ids=d, span_ids=s)
        ref.backward(do.double())
        out[name] = {"o": _maxdiff(o, ref), "dq": _maxdiff(q.grad, r[0].grad), "dk": _maxdiff(k.grad, r[1].grad),
                     "dv": _maxdiff(v.grad, r[2].grad)}
    h = torch.randn(37, 32, generator=gen).to(device, dt).requires_grad_()
    w = (torch.randn(300, 32, generator=gen) / 6).to(device, dt).requires_grad_()
    t = torch.randint(0, 300, (37,), generator=gen).to(device)
    t[::7] = -100
    for backend in ("chunked", "triton"):
        h.grad = w.grad = None
        loss = linear_cross_entropy(h, w, t, label_smoothing=0.1, z_loss=1e-3, backend=backend)
        loss.backward()
        h2, w2 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        ref = linear_cross_entropy_reference(h2, w2, t, label_smoothing=0.1, z_loss=1e-3)
        ref.backward()
        out[f"linear_cross_entropy {backend} (ls 0.1, z 1e-3, ignore)"] = {
            "loss": _maxdiff(loss, ref), "dh": _maxdiff(h.grad, h2.grad), "dW": _maxdiff(w.grad, w2.grad)}
    x = torch.randn(2, 7, 48, generator=gen).to(device, dt).requires_grad_()
    g = torch.randn(48, generator=gen).to(device, dt).requires_grad_()
    y = rms_norm(x, g, backend="triton")
    dy = torch.randn_like(y)
    y.backward(dy)
    x2, g2 = x.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    ref = rms_norm_reference(x2, g2)
    ref.backward(dy.double())
    out["rms_norm"] = {"y": _maxdiff(y, ref), "dx": _maxdiff(x.grad, x2.grad), "dw": _maxdiff(g.grad, g2.grad)}
    return out


# --------------------------------------------------------------------------- CPU memory of the fused CE
def _rss_kib(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def ce_peak_rss(backend: str, N: int, D: int, V: int) -> dict:
    """Run in a fresh process: peak resident memory (VmHWM) above the resident set after creating inputs."""
    torch.manual_seed(0)
    h = torch.randn(N, D).requires_grad_()
    w = (torch.randn(V, D) / D ** 0.5).requires_grad_()
    t = torch.randint(0, V, (N,))
    linear_cross_entropy(h[:8], w[:64], t[:8] % 64, backend=backend).backward()  # warm up kernels and allocator
    h.grad = w.grad = None
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    loss = linear_cross_entropy(h, w, t, backend=backend)
    loss.backward()
    sec = time.perf_counter() - t0
    return {"backend": backend, "peak_mib": (_rss_kib("VmHWM") - base) / 1024, "seconds": sec, "loss": loss.item()}


def cpu_ce_memory(N: int, D: int, V: int) -> dict:
    res = {"what": f"CPU peak RSS above inputs for loss + backward, fp32, N={N} tokens, D={D}, V={V}; one fresh "
                   "process per backend; VmHWM reset through /proc/self/clear_refs",
           "analytic_mib": {  # tensors that must coexist at the peak, from their sizes
               "torch (logits, fp32 log-softmax, grad logits)": 3 * N * V * 4 / 2**20,
               "chunked (one C-row fp32 chunk, dh, dW)": (_chunk(N, V) * V * 4 + N * D * 4 + V * D * 4) / 2**20},
           "runs": []}
    for backend in ("torch", "chunked"):
        code = (f"import json; from unitok.bench.kernels import ce_peak_rss; "
                f"print(json.dumps(ce_peak_rss({backend!r}, {N}, {D}, {V})))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        res["runs"].append(json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else
                           {"backend": backend, "error": p.stderr.strip()[-300:]})
    ok = [r for r in res["runs"] if "peak_mib" in r]
    if len(ok) == 2:
        res["chunked_over_torch_peak"] = ok[1]["peak_mib"] / ok[0]["peak_mib"]
        res["chunked_over_torch_time"] = ok[1]["seconds"] / ok[0]["seconds"]
    return res


def _chunk(N, V):
    from unitok.kernels.cross_entropy import default_chunk

    return default_chunk(N, V)


# --------------------------------------------------------------------------- GPU timing
# The GPU benchmark runs on DEV in DTYPE; tests dry-run its code paths on CPU with tiny shapes.
DEV = "cuda"
DTYPE = torch.bfloat16


def _bench(fn, grad_to_none=None) -> float:
    """Milliseconds per call (triton's do_bench on CUDA; one timed call elsewhere, for dry runs)."""
    if DEV != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none))


def _peak_mib(fn) -> float | None:
    if DEV != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _attention_impls(B, H, T, D, doc):
    """name -> f(q, k, v) for one shape and mask (None where a backend cannot express the mask)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    impls = {"triton": lambda q, k, v: attention(q, k, v, causal=True, doc_ids=doc, backend="triton")}

    def sdpa(backend, use_mask):
        mask = None
        if use_mask:
            mask = (doc[:, :, None] == doc[:, None, :]) & torch.ones(T, T, dtype=torch.bool, device=DEV).tril()
            mask = mask[:, None]

        def f(q, k, v):
            with sdpa_kernel(backend):
                if mask is None:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return f

    if doc is None:
        impls["sdpa_flash"] = sdpa(SDPBackend.FLASH_ATTENTION, False)
        impls["sdpa_cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION, False)
        impls["sdpa_efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION, False)
    else:  # flash cannot take a mask; cuDNN and mem-efficient take the dense boolean mask
        impls["sdpa_cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION, True)
        impls["sdpa_efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION, True)
    try:
        if DEV != "cuda":
            raise RuntimeError("skipped in CPU dry runs (compiling it takes minutes there)")
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if doc is None:
            def mask_mod(b, h, qi, ki):
                return qi >= ki
        else:
            def mask_mod(b, h, qi, ki):
                return (qi >= ki) & (doc[b, qi] == doc[b, ki])
        block_mask = create_block_mask(mask_mod, B, None, T, T, device=DEV)
        flex = torch.compile(flex_attention, dynamic=False)
        impls["flex"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    except Exception as e:  # noqa: BLE001 - record why, keep benchmarking
        impls["flex"] = f"unavailable: {e!r}"[:200]

    def unfused(q, k, v):
        s = (q @ k.transpose(-1, -2)).float() * (1.0 / math.sqrt(D))
        allowed = torch.ones(T, T, dtype=torch.bool, device=DEV).tril()
        if doc is not None:
            allowed = allowed & (doc[:, None, :, None] == doc[:, None, None, :])
        return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).to(q.dtype) @ v
    impls["unfused"] = unfused
    return impls


def bench_attention(Ts, head_dims=(64, 128), tokens: int = TOKENS, model_dim: int = MODEL_DIM) -> list[dict]:
    rows = []
    for T in Ts:
        for D in head_dims:
            for masking in ("causal", "docs"):
                B, H = max(1, tokens // T), model_dim // D
                doc = packed_doc_ids(B, T).to(DEV) if masking == "docs" else None
                pairs = allowed_pairs(T, True, doc) * (1 if doc is not None else B)
                flops_fwd = 4 * D * H * pairs  # QK^T and PV over the allowed pairs
                gen = torch.Generator(device=DEV).manual_seed(0)
                q, k, v = (torch.randn(B, H, T, D, device=DEV, dtype=DTYPE, generator=gen).requires_grad_()
                           for _ in range(3))
                do = torch.randn_like(q)
                ref = None
                for name, f in _attention_impls(B, H, T, D, doc).items():
                    row = {"T": T, "D": D, "B": B, "H": H, "mask": masking, "impl": name,
                           "mask_density": pairs / (B * T * T)}
                    if isinstance(f, str):
                        rows.append({**row, "error": f})
                        continue
                    try:
                        o = f(q, k, v)
                        if name == "triton":
                            ref = o.detach()
                        elif ref is not None:
                            row["max_diff_vs_triton"] = _maxdiff(o, ref)
                        f(q, k, v).backward(do)  # first backward: autotuning / compilation, untimed
                        fwd_ms = _bench(lambda: f(q, k, v))
                        fb_ms = _bench(lambda: f(q, k, v).backward(do), grad_to_none=[q, k, v])
                        row.update(fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, fwd_tflops=flops_fwd / fwd_ms / 1e9,
                                   fwd_bwd_tflops=3.5 * flops_fwd / fb_ms / 1e9,
                                   peak_mib=_peak_mib(lambda: f(q, k, v).backward(do)))
                    except Exception as e:  # noqa: BLE001 - OOM or an unsupported mask: record it
                        row["error"] = f"{type(e).__name__}: {e}"[:200]
                    q.grad = k.grad = v.grad = None
                    if DEV == "cuda":
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(_fmt_attn(row), flush=True)
    return rows


def bench_cross_entropy(quick: bool, shape=None) -> list[dict]:
    N, D, V = shape or ((4096 if quick else 8192), 4096, 131072)
    gen = torch.Generator(device=DEV).manual_seed(0)
    h = torch.randn(N, D, device=DEV, dtype=DTYPE, generator=gen).requires_grad_()
    w = (torch.randn(V, D, device=DEV, generator=gen) / D ** 0.5).to(DTYPE).requires_grad_()
    t = torch.randint(0, V, (N,), device=DEV, generator=gen)
    t[::10] = -100
    rows, ref = [], None
    for backend in ("torch", "chunked", "triton"):
        def f():
            loss = linear_cross_entropy(h, w, t, z_loss=1e-4, backend=backend)
            loss.backward()
            return loss
        row = {"N": N, "D": D, "V": V, "dtype": str(DTYPE).replace("torch.", ""), "backend": backend}
        try:
            loss = f()
            if ref is None:
                ref = (loss.item(), h.grad.clone(), w.grad.clone())
            else:
                row.update(loss_diff=abs(loss.item() - ref[0]), dh_diff=_maxdiff(h.grad, ref[1]),
                           dW_diff=_maxdiff(w.grad, ref[2]))
            row["fwd_bwd_ms"] = _bench(f, grad_to_none=[h, w])
            h.grad = w.grad = None
            row["peak_mib"] = _peak_mib(f)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:200]
        h.grad = w.grad = None
        if DEV == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_rms_norm(quick: bool, shapes=None) -> list[dict]:
    rows = []
    for N, D in shapes or (((16384, 4096),) if quick else ((16384, 2048), (16384, 4096), (16384, 8192))):
        x = torch.randn(N, D, device=DEV, dtype=DTYPE).requires_grad_()
        w = torch.ones(D, device=DEV, dtype=DTYPE).requires_grad_()
        dy = torch.randn_like(x)
        for name, f in {"triton": lambda: rms_norm(x, w, backend="triton"),
                        "torch_reference": lambda: rms_norm_reference(x, w),
                        "F.rms_norm": lambda: F.rms_norm(x, (D,), w, eps=1e-6)}.items():
            fwd = _bench(f)
            fb = _bench(lambda: f().backward(dy), grad_to_none=[x, w])
            # bytes: fwd reads x, writes y; bwd reads x, dy, writes dx (weights negligible)
            rows.append({"N": N, "D": D, "impl": name, "fwd_ms": fwd, "fwd_bwd_ms": fb,
                         "fwd_GBps": 2 * x.numel() * 2 / fwd / 1e6, "fwd_bwd_GBps": 5 * x.numel() * 2 / fb / 1e6})
            print(rows[-1], flush=True)
    return rows


def acceptance(att: list[dict], ce: list[dict]) -> dict:
    def get(impl, mask, T=8192, D=128):
        for r in att:
            if (r["impl"], r["mask"], r["T"], r["D"]) == (impl, mask, T, D) and "fwd_bwd_tflops" in r:
                return r["fwd_bwd_tflops"]
        return None
    out = {}
    ours = get("triton", "causal")
    sdpa = [x for x in (get(n, "causal") for n in ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient")) if x]
    if ours and sdpa:
        out["causal_8k_d128_vs_best_sdpa"] = ours / max(sdpa)
        out["causal_8k_d128_pass(>=0.9)"] = ours / max(sdpa) >= 0.9
    ours_d, flex = get("triton", "docs"), get("flex", "docs")
    if ours_d and flex:
        out["docs_8k_d128_vs_flex"] = ours_d / flex
        out["docs_8k_d128_pass(>=1.2)"] = ours_d / flex >= 1.2
    by = {r["backend"]: r for r in ce if r.get("peak_mib") is not None}
    if "torch" in by and "triton" in by:
        out["ce_peak_ratio"] = by["triton"]["peak_mib"] / by["torch"]["peak_mib"]
        out["ce_time_ratio"] = by["triton"]["fwd_bwd_ms"] / by["torch"]["fwd_bwd_ms"]
        out["ce_pass(<=0.25 mem, <=1.1 time)"] = out["ce_peak_ratio"] <= 0.25 and out["ce_time_ratio"] <= 1.1
    return out


def _fmt_attn(r: dict) -> str:
    head = f"| {r['T']:>5} | {r['D']:>3} | {r['mask']:6} | {r['impl']:14} |"
    if "error" in r:
        return f"{head} {r['error'][:60]} |"
    return (f"{head} {r['fwd_tflops']:7.1f} | {r['fwd_bwd_tflops']:7.1f} | {r['fwd_ms']:8.3f} | "
            f"{r['fwd_bwd_ms']:8.3f} | {'-' if r['peak_mib'] is None else round(r['peak_mib'])} |")
