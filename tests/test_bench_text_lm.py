import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_text_lm_writes_json(tmp_path):
    from pydoc_data.topics import topics

    data, extra = tmp_path / "a.txt", tmp_path / "b.txt"
    text = "\n".join(topics.values())
    data.write_text(text[:40000])
    extra.write_text(text[40000:45000])
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "unitok.cli", "bench", "text-lm", "--data", str(data), "--eval-data",
                        str(extra), "--minutes", "0.05", "--json", str(out), "--config",
                        str(ROOT / "configs" / "train" / "debug.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert {"nats_per_char", "eval_nats_per_char", "minutes", "params"} <= set(res)
    assert 0.5 < res["nats_per_char"] < 8 and 0.5 < res["eval_nats_per_char"] < 8
    assert res["held_out_chars"] == 4000 and res["minutes"] < 0.5
    assert "nats/char" in r.stdout
