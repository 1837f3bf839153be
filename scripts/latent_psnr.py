"""PSNR of an image tokenizer's continuous path against its quantized one on a folder of images.

    PYTHONPATH=. .venv/bin/python scripts/latent_psnr.py TOKENIZER_DIR IMAGE_DIR [--size 256] [--json OUT]

Prints (and writes with --json) `unitok.bench.latents.continuous_vs_quantized`: per image and on
average, decode(encode(x)) and decode_latents(latents(x)) against the prepared image, in dB.
"""

import argparse
import json
import sys

from unitok.bench.latents import continuous_vs_quantized
from unitok.errors import UnitokError
from unitok.tokenizers.base import load_tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizer")
    p.add_argument("images")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--json")
    a = p.parse_args(argv)
    try:
        r = continuous_vs_quantized(load_tokenizer(a.tokenizer), a.images, a.size)
    except UnitokError as e:
        print(f"unitok: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(r, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
