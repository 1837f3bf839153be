"""Fused RMSNorm vs. the torch reference (forward, dx, dweight); interpreter on CPU."""

import pytest
import torch

from unitok.kernels import rms_norm, rms_norm_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 5e-3}


@pytest.mark.parametrize("shape,dtype,with_weight", [
    ((2, 7, 48), torch.float32, True),  # D not a power of two, 14 rows over 4 programs
    ((5, 128), torch.float16, True),
    ((3, 2, 64), torch.float32, False),
])
def test_rms_norm_matches_reference(shape, dtype, with_weight):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(DEV, dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(DEV, dtype).requires_grad_() if with_weight else None
    dy = torch.randn(shape, generator=gen).to(DEV, dtype)
    y = rms_norm(x, w, 1e-6, backend="triton")
    y.backward(dy)
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_() if with_weight else None
    ref = rms_norm_reference(x64, w64, 1e-6)
    ref.backward(dy.double())
    pairs = [("y", y, ref), ("dx", x.grad, x64.grad)] + ([("dw", w.grad, w64.grad)] if with_weight else [])
    errs = {n: ((a.double() - b).abs().max() / b.abs().max().clamp(min=1)).item() for n, a, b in pairs}
    print(shape, dtype, "max rel diff", errs)
    assert y.dtype == dtype and y.shape == x.shape
    assert all(e < TOL[dtype] for e in errs.values()), errs


def test_rms_norm_dispatcher():
    x = torch.randn(3, 16)
    w = torch.ones(16)
    ref = rms_norm(x, w, backend="torch")
    assert torch.allclose(ref, torch.nn.functional.rms_norm(x, (16,), w, eps=1e-6), atol=1e-6)
    if DEV == "cpu":
        assert torch.equal(rms_norm(x, w, backend="auto"), ref)
    with pytest.raises(ValueError, match="unknown rms_norm backend"):
        rms_norm(x, w, backend="nope")
