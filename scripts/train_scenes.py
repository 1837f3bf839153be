"""The scenes recipe: scenes data, image / video / audio tokenizers and a unified model on 2 CPU cores,
then `unitok bench judge` (configs/train/scenes-cpu.yaml; docs/judges.md).

    .venv/bin/python scripts/train_scenes.py [--out runs/scenes] [--quick] [key=value ...]

A thin entry point: the stages are `unitok.apps.train_scenes` (its docstring, or `--help`).
"""

import os
import sys

from unitok.apps.train_scenes import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
