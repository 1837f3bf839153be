import subprocess
import sys

import pytest

from unitok.cli import build_parser, main

SUBCOMMANDS = [
    ["demo"], ["text", "train-tokenizer"], ["text", "encode"], ["lm", "train"], ["lm", "sample"],
    ["tokenizer", "train"], ["tokenizer", "bench"], ["bench", "text-lm"], ["bench", "kernels"], ["vocab", "show"], ["vocab", "build"],
    ["checkpoint", "export"], ["checkpoint", "convert"], ["checkpoint", "import"], ["checkpoint", "export-hf"],
    ["pretokenize"], ["shards", "show"], ["shards", "decode"],
    ["train"], ["bench", "train"], ["bench", "generate"], ["bench", "rd"], ["generate"], ["bench", "overfit"],
    ["bench", "pretokenize"],
    ["data", "scenes"], ["data", "split"], ["bench", "judge"],
]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: unitok " + " ".join(cmd) in capsys.readouterr().out


def test_every_handler_resolves():
    parser = build_parser()
    import argparse, importlib

    def walk(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    yield from walk(sub)
        if p.get_default("handler"):
            yield p.get_default("handler")

    handlers = set(walk(parser))
    assert len(handlers) == len(SUBCOMMANDS)
    from unitok.apps.bench_tokenizer import BENCHES
    from unitok.training.tokenizer import TRAINERS

    handlers |= set(TRAINERS.values()) | set(BENCHES.values())  # per-modality dispatch
    missing = []
    for h in handlers:
        module, func = h.split(":")
        try:
            getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as e:
            missing.append(f"{h}: {e}")
    assert not missing, missing


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unitok.cli", *args], capture_output=True, text=True)


def assert_user_error(r, *needles):
    """The README's promise for user errors: exit status 2 and one line on stderr,
    `unitok: error: <message>`, never a traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), r.stderr
    assert lines[0].startswith("unitok: error: "), lines[0]
    message = lines[0][len("unitok: error: "):]
    assert message.strip() and message == message.strip(), lines[0]
    for n in needles:
        assert n in message, (n, message)


def test_user_errors_are_one_line(tmp_path):
    missing = tmp_path / "missing.txt"
    r = run_cli("text", "train-tokenizer", str(missing), "--out", str(tmp_path / "o"))
    assert_user_error(r, "not found", str(missing))
    r = run_cli("vocab", "show", str(tmp_path / "nope.json"))
    assert_user_error(r, "not found", "nope.json")
    (tmp_path / "r.yaml").write_text("modality: smell\n")
    r = run_cli("tokenizer", "train", str(tmp_path / "r.yaml"), "--data", ".", "--out", str(tmp_path / "o"), "x=1")
    assert_user_error(r, "modality")
