"""Pretrain a small unified model on ../shared/data (text + images + audio + video) on 2 CPU cores.

    .venv/bin/python scripts/pretrain_shared.py --image-tokenizer IMG --audio-tokenizer AUD \
        --video-tokenizer VID [--data ../shared/data] [--out runs/shared] [key=value ...]

A thin entry point: the steps are `unitok.apps.pretrain_shared` (its docstring, or `--help`).
"""

import os
import sys

from unitok.apps.pretrain_shared import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
