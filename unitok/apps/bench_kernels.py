"""`unitok bench kernels`: fused kernels against torch, in one run (the measuring functions are
`unitok.bench.kernels`'s, which describes them).

On a GPU: attention, fused linear cross-entropy and RMSNorm timings and peak memory, the acceptance
ratios, and correctness at the benchmarked shapes. On CPU: the correctness checks (Triton interpreter,
small shapes), the CPU peak-memory comparison of the chunked cross-entropy, and a note that timing
needs a GPU. Everything goes into the JSON; a markdown table goes to stdout.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from unitok.bench.kernels import (acceptance, bench_attention, bench_cross_entropy, bench_rms_norm, correctness,
                                  cpu_ce_memory)

__all__ = ["run"]

CPU_CE_SHAPE = (2048, 256, 131072)  # N, D, V of the CPU memory comparison (fp32)
CPU_CE_SHAPE_QUICK = (1024, 256, 131072)


def run(args) -> int:
    quick = bool(getattr(args, "quick", False))
    seq = getattr(args, "seq_lens", None)
    ops = set((getattr(args, "ops", None) or "attention,ce,rms_norm").split(","))
    Ts = tuple(int(x) for x in seq.split(",")) if seq else (8192,) if quick else (1024, 2048, 4096, 8192, 16384)
    cmd = "unitok bench kernels --json " + str(args.json) + (" --quick" if quick else "") + (
        f" --seq-lens {seq}" if seq else "") + (f" --ops {args.ops}" if getattr(args, "ops", None) else "")
    cuda = torch.cuda.is_available()
    res = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "torch": torch.__version__,
           "python": platform.python_version(), "quick": quick}
    try:
        import triton  # after unitok.kernels (imported above), which switches on the interpreter without CUDA

        res["triton"] = triton.__version__
    except ImportError:
        res["triton"] = None
    t0 = time.perf_counter()
    res["correctness"] = correctness("cuda" if cuda else "cpu")
    res["correctness_seconds"] = time.perf_counter() - t0
    print("correctness (max |diff| vs float64 reference):")
    for k, v in res["correctness"].items():
        print(f"  {k}: " + ", ".join(f"{n} {x:.2e}" for n, x in v.items()))
    if cuda:
        res["device"] = torch.cuda.get_device_name()
        print(f"device: {res['device']}")
        print("| T | D | mask | impl | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd ms | fwd+bwd ms | peak MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        res["attention"] = bench_attention(Ts) if "attention" in ops else []
        res["cross_entropy"] = bench_cross_entropy(quick) if "ce" in ops else []
        res["rms_norm"] = bench_rms_norm(quick) if "rms_norm" in ops else []
        res["acceptance"] = acceptance(res["attention"], res["cross_entropy"])
        print("acceptance:", json.dumps(res["acceptance"], indent=1))
    else:
        res["device"] = "cpu"
        res["timing"] = "timing needs a GPU: run `unitok bench kernels --json OUT` on a CUDA machine"
        print(res["timing"])
        res["cross_entropy_cpu_memory"] = cpu_ce_memory(*(CPU_CE_SHAPE_QUICK if quick else CPU_CE_SHAPE))
        print("CPU cross-entropy memory:", json.dumps(res["cross_entropy_cpu_memory"], indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.json}")
    return 0
