"""Pretrain a small unified model on ../shared/data or ../shared/corpus (text + images + audio + video) on 2 CPU cores.

    .venv/bin/python scripts/pretrain_shared.py --image-tokenizer IMG --audio-tokenizer AUD \
        --video-tokenizer VID [--data ../shared/data] [--out runs/shared] [key=value ...]

The tokenizers are trained directories (`unitok tokenizer train ...`, see docs/unified.md for the
ones measured). --data holds text/*.txt and media folders in one of two layouts; a media folder that
is missing or empty leaves its modality out:
* the shared-data layout (../shared/data: Tiny Shakespeare): images/, audio/ and video/, with
  same-stem .txt captions or a transcripts.tsv / captions.tsv;
* the corpus layout (../shared/corpus, or a side of `unitok data split`): photos/ (no captions:
  unconditional image documents), speech/ (each clip paired with its transcript, the `text` column
  of speech/SOURCES.tsv, or speech/transcripts.tsv without one; text first or audio first by
  pretokenize's seeded choice) and video/; the novels in text/ are text documents.
Steps, each skipped when its output is already there:
1. inputs: each text file cut into documents of whole paragraphs or speeches (blank-line separated,
   at most --doc-chars characters, one JSONL line each); the audio folder without the WAVs that
   were decoded from a `.hq.ogg` beside them (the same recording twice would put held-out audio
   into training); the speech folder as links with its transcripts; the other folders as they are.
2. a 2,048-piece text tokenizer on the text files;
3. `unitok pretokenize` of the inputs (audio chunks of at most 12 s, so the LJ Speech and JFK
   transcripts stay with their clips; --set changes the policy);
4. `unitok train configs/train/unified-cpu.yaml` (30 minutes; trailing key=value override it), held
   out by source (every chunk of a recording, every clip of a video on one side; text in blocks of
   consecutive documents; in the corpus layout a source is what `unitok data split` groups by:
   every clip of one recording in video/SOURCES.tsv, speech by recording folder and language, so
   the shards' sources.jsonl gets each document's "group"). It prints each modality's held-out loss beside the fair baseline (the
   held-out targets' cross-entropy under the add-one-smoothed training unigram, and the same given
   the residual level) and what was held out per kind; the run directory gets loss.png (per
   modality, dashed: the baseline given the level), summary.json (`eval_loss_*`, `baseline_*`,
   `baseline_level_*`, `heldout_*`) and the card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pieces(text: str, max_chars: int):
    """(separator, piece): paragraphs (blank-line separated). One up to 4 x max_chars stays whole (a
    long speech is one document); a longer one (a text without blank lines) is cut at line ends, and a
    line longer than max_chars at the last space before max_chars (or at max_chars)."""
    for para in text.split("\n\n"):
        para = para.strip()
        if len(para) <= 4 * max_chars:
            if para:
                yield "\n\n", para
            continue
        sep = "\n\n"
        for line in para.split("\n"):
            while len(line) > max_chars:
                cut = line.rfind(" ", 1, max_chars + 1)
                cut = cut if cut > 0 else max_chars
                yield sep, line[:cut]
                line, sep = line[cut:], ""
            if line.strip():
                yield sep, line
            sep = "\n"


def text_documents(text: str, max_chars: int) -> list[str]:
    """Consecutive paragraphs grouped into documents of at most max_chars characters."""
    docs, cur = [], ""
    for sep, piece in _pieces(text, max_chars):
        if cur and len(cur) + len(sep) + len(piece) > max_chars:
            docs.append(cur)
            cur = ""
        cur = f"{cur}{sep}{piece}" if cur else piece.lstrip()
    if cur:
        docs.append(cur)
    return docs


# media folders under --data per layout -> modality (each folder optional; its tokenizer is needed when present);
# this order is the shards' document order (and so decides the held-out split)
LAYOUTS = {"shared": {"images": "image", "audio": "audio", "video": "video"},
           "corpus": {"photos": "image", "speech": "audio", "video": "video"}}


def _has_files(d: Path) -> bool:
    return d.is_dir() and any(f.is_file() and not f.name.startswith(".") for f in d.iterdir())


def layout(data: Path) -> str:
    """"corpus" when --data has photos/ or speech/ files, else "shared"."""
    return "corpus" if any(_has_files(data / f) for f in ("photos", "speech")) else "shared"


def _stage_speech(src: Path, dst: Path) -> None:
    """Links to the clips and a transcripts.tsv from SOURCES.tsv's text column (or the folder's own)."""
    from unitok.data.corpus import read_sources

    dst.mkdir(exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name not in ("SOURCES.tsv", "transcripts.tsv") and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    rows, tsv = read_sources(src), dst / "transcripts.tsv"
    tsv.unlink(missing_ok=True)  # remade each run; never written through a link into --data
    if any(r.get("text") for r in rows.values()):
        tsv.write_text("".join(f"{n}\t{r['text']}\n" for n, r in rows.items() if r.get("text")), encoding="utf-8")
    elif (src / "transcripts.tsv").is_file():
        tsv.symlink_to((src / "transcripts.tsv").resolve())


def stage_inputs(data: Path, out: Path, max_chars: int, texts: list[Path]) -> dict[str, Path]:
    """The pretokenizer's inputs: {"text": JSONL of documents, "images": folder, ...} for what --data has."""
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    staged = {}
    if texts:
        jsonl = staged["text"] = inputs / "text.jsonl"
        if not jsonl.is_file():
            docs = [d for f in texts for d in text_documents(f.read_text(encoding="utf-8", errors="replace"), max_chars)]
            jsonl.write_text("".join(json.dumps({"segments": [{"text": d}]}) + "\n" for d in docs))
    for name in LAYOUTS[layout(data)]:
        if not _has_files(data / name):
            continue
        staged[name] = data / name
        if name == "speech":
            staged[name] = inputs / "speech"
            _stage_speech(data / name, staged[name])
        if name == "audio":
            staged[name] = inputs / "audio"
            staged[name].mkdir(exist_ok=True)
            for f in sorted((data / "audio").iterdir()):
                decoded_copy = f.suffix == ".wav" and (f.parent / (f.stem + ".hq.ogg")).is_file()
                link = inputs / "audio" / f.name
                if not decoded_copy and not link.exists():
                    link.symlink_to(f.resolve())
    return staged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--image-tokenizer", help="trained image tokenizer (needed when DATA/images or photos has files)")
    ap.add_argument("--audio-tokenizer", help="trained audio tokenizer (needed when DATA/audio or speech has files)")
    ap.add_argument("--video-tokenizer", help="trained video tokenizer (needed when DATA/video has files)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                    help="folder with text/*.txt, images/, audio/, video/ or photos/, speech/, video/ "
                         "(default: ../shared/data)")
    ap.add_argument("--out", default="runs/shared")
    ap.add_argument("--doc-chars", type=int, default=2000, help="text document size (default: 2000 characters)")
    ap.add_argument("--text-vocab", type=int, default=2048, help="text tokenizer pieces (default: 2048)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "train" / "unified-cpu.yaml"))
    ap.add_argument("--workers", type=int, default=2, help="pretokenization processes (default: 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pretokenization policy setting, repeatable (`unitok pretokenize --help`); "
                         "audio_max_seconds=12 unless set")
    ap.add_argument("--prepare-only", action="store_true", help="stop after pretokenization")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    a = ap.parse_args(argv)
    from unitok.cli import main as cli

    def fail(msg: str) -> int:
        print(f"pretrain_shared: error: {msg}", file=sys.stderr)
        return 2

    data, out = Path(a.data), Path(a.out)
    bad = [kv for kv in a.set if "=" not in kv]
    if bad:
        return fail(f"--set takes KEY=VALUE, got {bad[0]!r}")
    if not data.is_dir():
        return fail(f"{data} is not a folder (--data: text/*.txt, images/, audio/, video/ or photos/, speech/, video/)")
    texts = sorted((data / "text").glob("*.txt")) if (data / "text").is_dir() else []
    media = LAYOUTS[layout(data)]
    tokenizers = {n: {"image": a.image_tokenizer, "audio": a.audio_tokenizer, "video": a.video_tokenizer}[m]
                  for n, m in media.items()}
    inputs = stage_inputs(data, out, a.doc_chars, texts)
    if not inputs:
        return fail(f"{data} has no text/*.txt and no media in images/, audio/ or video/ (or photos/, speech/)")
    for name in media:
        flag = f"--{media[name]}-tokenizer"
        if name in inputs and not tokenizers[name]:
            return fail(f"{data / name} has files: give {flag}")
        if name not in inputs:
            print(f"pretrain_shared: no {data / name} files; training without that modality", flush=True)
    if not texts:
        return fail(f"no {data / 'text'}/*.txt: the unified vocabulary needs a text tokenizer")
    spm = out / "text-tokenizer"
    if not (spm / "spm.model").is_file():
        rc = cli(["text", "train-tokenizer", *map(str, texts), "--vocab-size", str(a.text_vocab), "--out", str(spm)])
        if rc:
            return rc
    shards, made = out / "shards", False
    if not (shards / "stats.json").is_file() or (shards / "progress.json").is_file():
        policy = {"audio_max_seconds": "12", **dict(kv.split("=", 1) for kv in a.set)}
        rc = cli(["pretokenize", *map(str, inputs.values()),
                  "--tokenizer", str(spm), *(tokenizers[n] for n in media if n in inputs),
                  "--out", str(shards), "--workers", str(a.workers),
                  *(["--resume"] if (shards / "progress.json").is_file() else []),
                  "--set", *(f"{k}={v}" for k, v in policy.items())])
        if rc:
            return rc
        made = True
    if layout(data) == "corpus":  # every run: an interrupted one may have stopped between the two steps
        from unitok.data.corpus import group_sources

        group_sources(shards, data)
    if a.prepare_only:
        return 0 if made else cli(["shards", "show", str(shards)])
    run = out / "run"
    resume = ["--resume"] if (run / "checkpoint").exists() else []
    return cli(["train", a.config, "--data", str(shards), "--out", str(run), *resume, *a.overrides])

