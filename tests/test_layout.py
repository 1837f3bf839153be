"""The top-level tokenizers/ folder holds recipes only: it must never shadow HF `tokenizers`."""

import subprocess
import sys

from conftest import ROOT


def test_recipe_folder_is_not_a_package():
    folder = ROOT / "tokenizers"
    assert folder.is_dir()
    assert not list(folder.rglob("*.py")), "tokenizers/ must contain no Python files"


def test_hf_tokenizers_not_shadowed_from_repo_root():
    code = "import tokenizers, sys; print(getattr(tokenizers, '__file__', None))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # Either the real HF package (a file in site-packages) or, if absent, not our folder.
    assert str(ROOT / "tokenizers") not in out.stdout
    assert out.stdout.strip() != "None"
