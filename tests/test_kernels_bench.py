"""`unitok bench kernels` on CPU: correctness checks in the interpreter, CPU memory of the chunked
cross-entropy, and the JSON says that timing needs a GPU."""

import json

import pytest
import torch

from unitok.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run is the real benchmark")
def test_bench_kernels_cpu(tmp_path, monkeypatch):
    import unitok.bench.kernels as bk

    monkeypatch.setattr(bk, "CPU_CE_SHAPE_QUICK", (256, 32, 4096))  # tiny: the real run uses 128k ids
    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--json", str(out), "--quick"]) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and "needs a GPU" in res["timing"]
    assert len(res["correctness"]) == 7
    for name, diffs in res["correctness"].items():
        assert max(diffs.values()) < 1e-4, (name, diffs)
    mem = res["cross_entropy_cpu_memory"]
    peaks = {r["backend"]: r["peak_mib"] for r in mem["runs"]}
    assert set(peaks) == {"torch", "chunked"} and peaks["torch"] > 0
