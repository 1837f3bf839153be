"""Fused linear cross-entropy ("chunked" torch and "triton") vs. the unfused reference.

Loss and the gradients of hidden and weight, with ignore_index, label smoothing, z-loss and all
reductions, on shapes where V is not a power of two and N is not a multiple of the chunk.
Without CUDA the Triton kernel runs in the interpreter.
"""

import pytest
import torch

from unitok.kernels import linear_cross_entropy, linear_cross_entropy_reference
from unitok.kernels.cross_entropy import default_chunk, linear_cross_entropy_chunked, linear_cross_entropy_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(N=37, D=32, V=300, dtype=torch.float32, n_ignored=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, D, generator=gen)).to(DEV, dtype).requires_grad_()
    w = (torch.randn(V, D, generator=gen) / D ** 0.5).to(DEV, dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=gen)
    t[torch.randperm(N, generator=gen)[:n_ignored]] = -100
    return h, w, t.to(DEV)


def _check(fn, reduction="mean", label_smoothing=0.0, z_loss=0.0, dtype=torch.float32, tol=1e-5, **inputs):
    h, w, t = _inputs(dtype=dtype, **inputs)
    kw = dict(label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction)
    loss = fn(h, w, t, **kw)
    up = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1)).to(DEV) if reduction == "none" else None
    (loss * up).sum().backward() if up is not None else loss.backward()
    got = [loss.detach(), h.grad, w.grad]
    h2, w2 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = linear_cross_entropy_reference(h2, w2, t, **kw)
    (ref * up.double()).sum().backward() if up is not None else ref.backward()
    errs = [(a.double() - b).abs().max().item() for a, b in zip(got, [ref, h2.grad, w2.grad])]
    print(f"{fn.__name__} {reduction} ls={label_smoothing} z={z_loss} {dtype}: max|diff| loss/dh/dW {errs}")
    assert got[1].dtype == dtype and got[2].dtype == dtype
    assert max(errs) < tol, errs


CE_CASES = [
    dict(),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-2),
    dict(label_smoothing=0.1, z_loss=1e-2, reduction="sum"),
    dict(reduction="none", z_loss=1e-2),
]


@pytest.mark.parametrize("case", range(len(CE_CASES)))
def test_chunked_matches_reference(case):
    _check(lambda h, w, t, **kw: linear_cross_entropy_chunked(h, w, t, chunk=8, **kw), **CE_CASES[case])


@pytest.mark.parametrize("case", range(len(CE_CASES)))
def test_triton_matches_reference(case):
    # N=21 rows, V=200 (4 tiles of 64, the last one partial), 3 chunks of 8 rows
    _check(lambda h, w, t, **kw: linear_cross_entropy_triton(h, w, t, chunk=8, **kw), N=21, V=200, **CE_CASES[case])


def test_triton_fp16():
    _check(lambda h, w, t, **kw: linear_cross_entropy_triton(h, w, t, chunk=16, **kw), N=21, V=200,
           label_smoothing=0.1, z_loss=1e-3, dtype=torch.float16, tol=1e-2)


def test_all_ignored_gives_zero_loss_and_grads():
    h, w, t = _inputs(N=8, n_ignored=8)
    for backend in ("torch", "chunked", "triton"):
        h.grad = w.grad = None
        loss = linear_cross_entropy(h, w, t, backend=backend)
        loss.backward()
        assert loss.item() == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0, backend


def test_no_grad_and_dispatcher(monkeypatch):
    import unitok.kernels.cross_entropy as ce

    h, w, t = _inputs()
    passes = []
    real = ce._chunked_pass

    def spy(*a, **kw):
        passes.append((kw["need_h"], kw["need_w"]))
        return real(*a, **kw)
    monkeypatch.setattr(ce, "_chunked_pass", spy)
    with torch.no_grad():  # evaluation: the loss only, no gradient GEMMs (needs_input_grad is True here too)
        a = linear_cross_entropy(h, w, t, backend="chunked")
    assert passes == [(False, False)] and a.grad_fn is None
    b = linear_cross_entropy(h, w, t, backend="torch")
    assert abs(a.item() - b.item()) < 1e-5
    if DEV == "cpu":
        assert abs(linear_cross_entropy(h, w, t, backend="auto").item() - b.item()) < 1e-5  # -> chunked
    with pytest.raises(ValueError, match="unknown cross-entropy backend"):
        linear_cross_entropy(h, w, t, backend="nope")
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, t, backend="chunked", reduction="avg")


def test_default_chunk_bounds_memory():
    assert default_chunk(100_000, 131_072) == 512 and default_chunk(100_000, 131_072, elt=2) == 1024
    assert default_chunk(10, 128_000) == 10
    assert default_chunk(100_000, 1000) == 4096


def test_triton_block_sizes_valid_on_gpu():
    from unitok.kernels._triton import is_pow2
    from unitok.kernels.cross_entropy import block_v, num_warps

    for V in (200, 32_000, 131_072, 152_064):
        bv = block_v(V)
        assert is_pow2(bv) and bv <= 4096 and num_warps(bv) in (4, 8)


def test_frozen_weight_and_bf16_accumulation():
    """Only the needed gradient is computed; a bf16 dW accumulated over 3 chunks stays close."""
    h, w, t = _inputs(N=20, V=100)
    w.requires_grad_(False)
    linear_cross_entropy_chunked(h, w, t, chunk=8).backward()
    assert h.grad is not None and w.grad is None
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    linear_cross_entropy_chunked(hb, wb, t, chunk=8).backward()
    h2, w2 = hb.detach().double(), wb.detach().double().requires_grad_()  # same (rounded) inputs
    linear_cross_entropy_reference(h2, w2, t).backward()
    err = ((wb.grad.double() - w2.grad).abs().max() / w2.grad.abs().max()).item()
    print("bf16 dW (3 chunks) max|diff| / max|dW|", err)
    assert wb.grad.dtype == torch.bfloat16 and err < 1e-2
