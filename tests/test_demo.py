import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_report_and_plot(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "unitok.cli", "demo", "--out", str(out), "--minutes", "0.1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    report = (out / "report.md").read_text()
    assert "![loss curve](loss.png)" in report and "nats/char" in report and "Sample" in report
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint" / "model.safetensors").is_file()
