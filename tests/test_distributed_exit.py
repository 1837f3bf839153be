"""The end of a run under torchrun: `unitok.cli` tears the process group down on every rank, after a barrier.

Without it, a rank that finished first exited with the gloo group alive while the other still worked, and
could abort ("terminate called without an active exception", exit -6): seen once in test_engine.py's
two-rank text LM under load, and reproduced in 1 of 10 two-rank runs where rank 1 lagged 0.3 s behind rank 0
at the end (docs/LOG.md, 2026-12-08). Here rank 1 lags 1 s: rank 0 must still be waiting for it, and
both must leave with no group and exit 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_engine import _free_port

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys, time
import torch, torch.distributed as dist
from unitok.cli import _end_distributed
dist.init_process_group("gloo")
r = dist.get_rank()
objs = [None, None]
dist.all_gather_object(objs, r)  # the engine's last collective of a DDP run
if r == 1:
    time.sleep(1.0)  # rank 1 still busy: rank 0 would otherwise exit first
lag_over = time.time() if r == 1 else None
_end_distributed()
print(json.dumps({"rank": r, "left": time.time(), "lag_over": lag_over, "group": dist.is_initialized()}), flush=True)
"""



def test_every_rank_waits_for_the_others_then_leaves_without_a_group(tmp_path):
    (tmp_path / "end.py").write_text(SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={_free_port()}", str(tmp_path / "end.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {d["rank"]: d for d in (json.loads(line) for line in r.stdout.splitlines() if line.startswith("{"))}
    assert sorted(recs) == [0, 1]
    assert recs[0]["left"] >= recs[1]["lag_over"]  # rank 0 waited at the barrier for the lagging rank
    assert not recs[0]["group"] and not recs[1]["group"]  # destroyed on both ranks

