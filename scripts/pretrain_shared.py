"""Pretrain a small unified model on ../shared/data (text + images + audio + video) on 2 CPU cores.

    .venv/bin/python scripts/pretrain_shared.py --image-tokenizer IMG --audio-tokenizer AUD \
        --video-tokenizer VID [--data ../shared/data] [--out runs/shared] [key=value ...]

The tokenizers are trained directories (`unitok tokenizer train ...`, see docs/unified.md for the
ones measured). Steps, each skipped when its output is already there:
1. inputs: Tiny Shakespeare cut into documents of whole speeches (at most --doc-chars characters,
   one JSONL line each); the audio folder without the WAVs that were decoded from a `.hq.ogg` beside
   them (the same recording twice would put held-out audio into training); the images and videos
   folders as they are.
2. a 2,048-piece text tokenizer on Tiny Shakespeare;
3. `unitok pretokenize` of the inputs (audio chunks of at most 12 s, so the LJ Speech and JFK
   transcripts stay with their clips);
4. `unitok train configs/train/unified-cpu.yaml` (30 minutes; trailing key=value override it). The
   run directory gets loss.png (per modality, dashed: unigram entropy), summary.json and the card.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def text_documents(text: str, max_chars: int) -> list[str]:
    """Consecutive speeches (blank-line separated) grouped into documents of at most max_chars."""
    docs, cur = [], ""
    for speech in text.split("\n\n"):
        speech = speech.strip()
        if not speech:
            continue
        if cur and len(cur) + 2 + len(speech) > max_chars:
            docs.append(cur)
            cur = ""
        cur = f"{cur}\n\n{speech}" if cur else speech
    if cur:
        docs.append(cur)
    return docs


def stage_inputs(data: Path, out: Path, max_chars: int) -> list[Path]:
    inputs = out / "inputs"
    (inputs / "audio").mkdir(parents=True, exist_ok=True)
    jsonl = inputs / "text.jsonl"
    if not jsonl.is_file():
        docs = text_documents((data / "text" / "tinyshakespeare.txt").read_text(), max_chars)
        jsonl.write_text("".join(json.dumps({"segments": [{"text": d}]}) + "\n" for d in docs))
    for f in sorted((data / "audio").iterdir()):
        decoded_copy = f.suffix == ".wav" and (f.parent / (f.stem + ".hq.ogg")).is_file()
        link = inputs / "audio" / f.name
        if not decoded_copy and not link.exists():
            link.symlink_to(f.resolve())
    return [jsonl, data / "images", inputs / "audio", data / "video"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--image-tokenizer", required=True)
    ap.add_argument("--audio-tokenizer", required=True)
    ap.add_argument("--video-tokenizer", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="runs/shared")
    ap.add_argument("--doc-chars", type=int, default=2000, help="text document size (default: 2000 characters)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "train" / "unified-cpu.yaml"))
    ap.add_argument("--workers", type=int, default=2, help="pretokenization processes (default: 2)")
    ap.add_argument("--prepare-only", action="store_true", help="stop after pretokenization")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    a = ap.parse_args(argv)
    from unitok.cli import main as cli

    data, out = Path(a.data), Path(a.out)
    for d in ("text/tinyshakespeare.txt", "images", "audio", "video"):
        if not (data / d).exists():
            print(f"pretrain_shared: {data / d} not found (--data is the shared data folder)", file=sys.stderr)
            return 2
    inputs = stage_inputs(data, out, a.doc_chars)
    spm = out / "text-tokenizer"
    if not (spm / "spm.model").is_file():
        rc = cli(["text", "train-tokenizer", str(data / "text" / "tinyshakespeare.txt"), "--vocab-size", "2048",
                  "--out", str(spm)])
        if rc:
            return rc
    shards, made = out / "shards", False
    if not (shards / "stats.json").is_file() or (shards / "progress.json").is_file():
        rc = cli(["pretokenize", *map(str, inputs), "--tokenizer", str(spm), a.image_tokenizer, a.audio_tokenizer,
                  a.video_tokenizer, "--out", str(shards), "--workers", str(a.workers),
                  *(["--resume"] if (shards / "progress.json").is_file() else []),
                  "--set", "audio_max_seconds=12"])
        if rc:
            return rc
        made = True
    if a.prepare_only:
        return 0 if made else cli(["shards", "show", str(shards)])
    run = out / "run"
    resume = ["--resume"] if (run / "checkpoint").exists() else []
    return cli(["train", a.config, "--data", str(shards), "--out", str(run), *resume, *a.overrides])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
