"""Compile the Triton kernels for an H100 (sm_90) without a GPU, to check every launch config.

The interpreter runs tiles and code a GPU rejects (tl.dot under 16, non-constexpr globals, shared
memory overflows), so tests also compile each kernel ahead of time for sm_90 with Triton's bundled
ptxas and read the real shared memory of the cubin and ptxas' register/spill report.

Must run in a process where TRITON_INTERPRET is 0 (the interpreter replaces the JIT functions);
`python -m unitok.kernels.aot [--all]` does that and prints one JSON line per compiled config.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SM = 90


def _setup():
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import importlib

    import triton

    mods = {m: importlib.import_module(f"unitok.kernels.{f}")
            for m, f in (("attention", "triton_attention"), ("cross_entropy", "cross_entropy"),
                         ("rms_norm", "triton_rms_norm"))}
    if not isinstance(mods["attention"]._attn_fwd, triton.runtime.JITFunction):
        raise RuntimeError("TRITON_INTERPRET must be 0 before the kernel modules are imported")
    return mods


def _signature(fn, ptr_types: dict, floats: set, const: dict) -> dict:
    sig = {}
    for n in fn.arg_names:
        sig[n] = "constexpr" if n in const else ptr_types.get(n, "fp32" if n in floats else "i32")
    return sig


def compile_kernel(kernel: str, *, head_dim: int = 128, dtype: str = "bf16", block_m: int = 64, block_n: int = 64,
                   num_warps: int = 4, num_stages: int = 3, group: int = 1) -> dict:
    """Compile one kernel config for sm_90 -> {shared, registers, spill_bytes, ...}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mods = _setup()
    A, CE, R = mods["attention"], mods["cross_entropy"], mods["rms_norm"]
    t = f"*{dtype}"
    if kernel in ("fwd", "dkdv", "dq", "delta"):
        fn = {"fwd": A._attn_fwd, "dkdv": A._attn_bwd_dkdv, "dq": A._attn_bwd_dq, "delta": A._attn_bwd_delta}[kernel]
        ptrs = {n: t for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}
        ptrs.update({n: "*fp32" for n in ("LSE", "DELTA")}, **{n: "*i32" for n in ("LO", "HI", "QLO", "QHI")})
        const = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, UPCAST=False)
        if kernel == "delta":
            const = dict(HEAD_DIM=head_dim, BLOCK_M=block_m)
        floats = {"qk_scale", "sm_scale"}
    elif kernel == "ce":
        fn = CE._ce_chunk_kernel
        ptrs = {"X": t, "TGT": "*i64", "WTOK": "*fp32", "LOSS": "*fp32"}
        const = dict(BLOCK_V=block_n, GRAD=True)
        floats = {"eps", "z"}
    elif kernel in ("rms_fwd", "rms_bwd"):
        fn = R._rms_fwd if kernel == "rms_fwd" else R._rms_bwd
        ptrs = {"X": t, "W": t, "Y": t, "DY": t, "DX": t, "R": "*fp32", "DW": "*fp32"}
        const = dict(BLOCK_D=block_n, HAS_W=True)
        floats = {"eps"}
    else:
        raise ValueError(kernel)
    sig = _signature(fn, ptrs, floats, const)
    # What the JIT specializes at run time: pointers (torch allocations) and strides are multiples of 16.
    # Without these the loads cannot be vectorized and the pipeliner (num_stages) does nothing.
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*") or (n.startswith("s") and sig[n] == "i32" and n != "s_bound_b")}
    src = ASTSource(fn, sig, const, attrs)
    k = triton.compile(src, target=GPUTarget("cuda", SM, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
    out = {"kernel": kernel, "head_dim": head_dim, "dtype": dtype, "BLOCK_M": block_m, "BLOCK_N": block_n,
           "num_warps": num_warps, "num_stages": num_stages, "shared": k.metadata.shared}
    ptx = k.asm["ptx"]
    out.update(_ptxas_report(ptx))
    # Hopper tensor-core instructions (wgmma) vs the Ampere-style fallback (mma.sync): a dot on sm_90
    # falls back when its tile is too small for a warpgroup; the fallback runs at about half the rate.
    out.update(wgmma=ptx.count("wgmma.mma_async"), mma_sync=ptx.count("mma.sync"))
    return out


def _ptxas_report(ptx: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(SM).path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        r = subprocess.run([ptxas, f"-arch=sm_{SM}a", "-v", str(p), "-o", str(Path(d) / "k.cubin")],
                           capture_output=True, text=True)
    text = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return {"registers": int(regs.group(1)) if regs else None, "spill_bytes": int(spill.group(1)) if spill else None}


def representative() -> list[dict]:
    """One config per kernel (what the tests compile): the largest tiles the autotuner may pick."""
    return [
        dict(kernel="fwd", head_dim=128, block_m=128, block_n=64, num_warps=8, num_stages=3),
        dict(kernel="dkdv", head_dim=128, block_m=32, block_n=128, num_warps=8, num_stages=2, group=4),
        dict(kernel="dq", head_dim=64, block_m=128, block_n=64, num_warps=8, num_stages=3),
        dict(kernel="delta", head_dim=128, block_m=64, num_warps=4, num_stages=1),
        dict(kernel="ce", block_n=4096, num_warps=8, num_stages=2),
        dict(kernel="rms_fwd", block_n=4096, num_warps=8, num_stages=2),
        dict(kernel="rms_bwd", block_n=4096, num_warps=8, num_stages=2),
    ]


def every_config() -> list[dict]:
    """Every autotune config of the attention kernels for head dims 64 and 128."""
    mods = _setup()
    out = []
    for kernel in ("fwd", "dkdv", "dq"):
        for D in (64, 128):
            for c in mods["attention"].configs(kernel, D):
                out.append(dict(kernel=kernel, head_dim=D, block_m=c.kwargs["BLOCK_M"], block_n=c.kwargs["BLOCK_N"],
                                num_warps=c.num_warps, num_stages=c.num_stages))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    jobs = every_config() if "--all" in argv else representative()
    for job in jobs:
        try:
            print(json.dumps(compile_kernel(**job)), flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(json.dumps({**job, "error": f"{type(e).__name__}: {e}"[:400]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
