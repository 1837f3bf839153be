#!/usr/bin/env bash
# Create .venv (once) and install unitok with its test extras into it.
#
# torch: a machine that already has torch keeps it (the venv sees the system
# site-packages). A machine without a GPU gets the CPU build torch==2.13.0
# first (a ~200 MB wheel instead of ~5 GB of CUDA packages); a GPU machine
# gets the registry's default build. Everything else then resolves against it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.unitok-installed

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    if "$PY" -c "import torch" 2>/dev/null; then
        echo "setup: found torch $("$PY" -c 'import torch; print(torch.__version__)') in $PY; keeping it"
        "$PY" -m venv --system-site-packages "$VENV"
    else
        "$PY" -m venv "$VENV"
    fi
fi

pip() { "$VENV/bin/python" -m pip "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: GPU found; installing the default (CUDA) torch build"
        pip install -q torch
    else
        echo "setup: no GPU found; installing the CPU build torch==2.13.0"
        pip install -q torch==2.13.0
    fi
fi
echo "setup: installing unitok and its dependencies into $VENV"
pip install -q -e ".[dev]"
# taming's modules are only used by the parity tests; --no-deps keeps its declared dependencies
# (CUDA torch, torchvision, pytorch-lightning) out of the install.
pip install -q --no-deps taming-transformers==0.0.1
touch "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
