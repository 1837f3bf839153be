"""Measure how far the golden loss curves move on other CPUs, and re-record them.

tests/test_engine_curves.py compares each trainer's per-step loss with tests/assets/curves/NAME.json
within per-phase tolerances (PHASES there). This script is not run by the tests:

    .venv/bin/python scripts/record_curves.py                # all three trainers under simulated CPUs
    .venv/bin/python scripts/record_curves.py vqgan --write  # re-record vqgan.json here, then the same

Another CPU is simulated by a fresh process per variant: torch's kernels for another vector unit
(ATEN_CPU_CAPABILITY), oneDNN's and MKL's (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, MKL_CBWR), and
2 or 4 threads (other reduction orders). Per phase it prints the largest relative difference from
the recorded curve over all variants, for single steps and for their mean, and each tolerance's
margin over it; a margin below 3 means the test may fail on another machine. All three trainers
take about 8 minutes on 2 busy cores.

Re-record only after a deliberate change of a trainer's arithmetic (or of a dependency that changes
it), never to make a failing test pass; then check that the one-line loss-weight changes of
docs/testing.md still fail the test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SSE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
       "MKL_CBWR": "COMPATIBLE"}
VARIANTS = {"this CPU": ({}, 1), "AVX2 kernels": (AVX2, 1), "SSE kernels": (SSE, 1), "2 threads": ({}, 2),
            "4 threads": ({}, 4), "AVX2, 2 threads": (AVX2, 2), "SSE, 2 threads": (SSE, 2)}


def _curves():
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import test_engine_curves

    return test_engine_curves


def run(name: str, env: dict, threads: int) -> dict:
    """One training run in a fresh process (the kernel choice is made when torch loads)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run.json"
        r = subprocess.run([sys.executable, __file__, "--worker", name, str(threads), str(out)], cwd=ROOT,
                           env={**os.environ, **env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"record_curves: {name} failed:\n{r.stderr[-3000:]}")
        return json.loads(out.read_text())


def worker(name: str, threads: int, out: Path) -> None:
    import torch

    with tempfile.TemporaryDirectory() as d:
        loss = _curves().RUNS[name](Path(d), threads)
    out.write_text(json.dumps({"loss": loss, "cpu_capability": torch.backends.cpu.get_cpu_capability()}))


def spread(name: str) -> None:
    c = _curves()
    want = np.array(json.loads((c.CURVES / f"{name}.json").read_text())["loss"])
    curves = {}
    for label, (env, threads) in VARIANTS.items():
        got = run(name, env, threads)
        curves[label] = np.array(got["loss"])
        print(f"{name}: {label} ({got['cpu_capability']} kernels, {threads} thread(s)): largest difference "
              f"{np.abs(curves[label] / want - 1).max():.1e}", flush=True)
    start = 0
    for end, step_rtol, mean_rtol in c.PHASES[name]:
        rel = {k: v[start:end] / want[start:end] - 1 for k, v in curves.items()}
        _report(f"{name} steps {start + 1}-{end}, each", {k: np.abs(v).max() for k, v in rel.items()}, step_rtol)
        _report(f"{name} steps {start + 1}-{end}, mean", {k: abs(v.mean()) for k, v in rel.items()}, mean_rtol)
        start = end


def _report(what: str, diffs: dict, rtol: float) -> None:
    worst = max(diffs, key=diffs.get)
    print(f"{what}: largest difference {diffs[worst]:.1e} ({worst}), tolerance {rtol:g}, "
          f"margin {rtol / max(diffs[worst], 1e-12):.0f}x")


def write(name: str) -> None:
    import torch

    got = run(name, {}, 1)
    path = _curves().CURVES / f"{name}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    path.write_text(json.dumps({"trainer": name, "loss": got["loss"], "recorded": {
        "commit": commit.stdout.strip(), "torch": torch.__version__, "cpu_capability": got["cpu_capability"],
        "vector-quantize-pytorch": version("vector-quantize-pytorch")}}) + "\n")
    print(f"wrote {path} ({len(got['loss'])} steps)")


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="lm, vqgan and/or encodec (default: all three)")
    ap.add_argument("--write", action="store_true", help="re-record the curve on this machine first")
    args = ap.parse_args(argv)
    trainers = list(_curves().RUNS)
    if set(args.names) - set(trainers):
        ap.error(f"unknown trainer(s) {sorted(set(args.names) - set(trainers))}; choose from {trainers}")
    for name in args.names or trainers:
        if args.write:
            write(name)
        spread(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
