"""Import Triton once, in the right mode, for every kernel file.

Without CUDA the Triton kernels can still run, slowly, in Triton's interpreter
(`TRITON_INTERPRET=1`, kernels execute on CPU tensors with numpy). Triton reads
that variable when a kernel is *decorated*, so it must be set before triton is
imported; `unitok.kernels` does it on import when no GPU is present (a value the
user set is kept), and this module checks that it took effect. The interpreter
computes bf16 arithmetic wrongly, so kernels upcast bf16 tiles to fp32 when
`INTERPRET` is true.
"""

from __future__ import annotations

import os

import torch

import unitok.kernels  # noqa: F401 - sets TRITON_INTERPRET=1 without CUDA, before triton is imported
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if INTERPRET:  # triton's own jit helpers (tl.cdiv, tl.max, ...) are decorated when triton is first imported
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.standard.cdiv, InterpretedFunction):
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on "
                           "CPU; set TRITON_INTERPRET=1 in the environment or import unitok.kernels first")

# Shared memory per block on H100/H200 (sm_90): 227 KiB usable with opt-in.
SMEM_LIMIT = 232448


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_device(*tensors: torch.Tensor) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter."""
    for t in tensors:
        if t.is_cuda and INTERPRET:
            raise RuntimeError("TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it to run on the GPU")
        if not t.is_cuda and not INTERPRET:
            raise RuntimeError(f"Triton kernels need CUDA tensors (got {t.device}); use the torch backend on CPU")


__all__ = ["triton", "tl", "INTERPRET", "SMEM_LIMIT", "is_pow2", "check_device"]
