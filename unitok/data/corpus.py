"""The shared corpus (../shared/corpus) split by source into train/ and held-out/ folders of symlinks.

    unitok data split ../shared/corpus --out runs/corpus-split --held-out-fraction 0.2 --seed 0

The corpus has the folders photos/, speech/, video/ and text/; each media folder has a SOURCES.tsv
(file, package, licence, path_in_package, ...; speech/ also text and language, video/ original_file).
A held-out file must not share its source with a training file, so files go to one side in groups:

* photos: each file alone (320 distinct photos); stratified by package, so every package with two
  or more photos has some on each side;
* video: by `original_file` (the 22 clips are cut from 4 recordings);
* speech: by the folder of `path_in_package` and the language, i.e. one recording session: the
  Asterisk prompts are one voice (en_US_f_Allison) in folders of related prompts (digits, letters,
  ...), the Tux Paint descriptions a few unnamed speakers per language, recorded per stamp folder
  (animals/birds, ...). A speaker cannot be told apart more finely (Tux Paint names none), and
  holding out whole voices would leave no 8 kHz speech on one side (Asterisk is one voice).
  Stratified by package and language: each language with two or more groups has speech on each side;
* text: each file alone.
The split is `unitok.data.packed.split_documents` (the trainer's, by group and stratum), so it is the
same rule as the unified trainer's held-out split and deterministic per seed. Files without a
SOURCES.tsv row are each their own group. OUT/train/<folder>/ and OUT/held-out/<folder>/ hold
symlinks to the corpus files (what `unitok tokenizer train` / `bench` and pretokenize read), with
that side's rows of SOURCES.tsv and speech/transcripts.tsv; OUT/split.json says what went where.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from unitok.data.media import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS
from unitok.data.packed import split_documents
from unitok.errors import DataError

__all__ = ["FOLDERS", "SIDES", "read_sources", "corpus_files", "split_corpus", "write_split", "group_sources", "run_cli"]

FOLDERS = {"photos": IMAGE_EXTS, "speech": AUDIO_EXTS, "video": VIDEO_EXTS, "text": {".txt"}}
SIDES = ("train", "held-out")
TABLES = ("SOURCES.tsv", "transcripts.tsv")  # per-file tables, copied per side with that side's rows


def read_sources(folder: Path) -> dict[str, dict]:
    """SOURCES.tsv of a corpus folder: {file: row}; {} without one."""
    f = folder / "SOURCES.tsv"
    if not f.is_file():
        return {}
    with open(f, newline="", encoding="utf-8") as fh:
        return {r["file"]: r for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)}


def _group(folder: str, name: str, row: dict | None) -> tuple[str, str]:
    """(group, stratum) of one file: see the module docstring."""
    if row is None:
        return name, ""
    if folder == "video" and row.get("original_file"):
        return row["original_file"], ""
    if folder == "speech" and row.get("path_in_package"):
        lang = row.get("language", "")
        return f"{row.get('package', '')}|{lang}|{row['path_in_package'].rsplit('/', 1)[0]}", \
            f"{row.get('package', '')}|{lang}"
    if folder == "photos":
        return name, row.get("package", "")
    return name, ""


def corpus_files(corpus) -> list[tuple[str, str, str, str]]:
    """(folder, file, group, stratum) for every file of the corpus folders that exist, sorted."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise DataError(f"{corpus} is not a folder (a corpus: {', '.join(f'{f}/' for f in FOLDERS)})")
    out = []
    for folder, exts in FOLDERS.items():
        d = corpus / folder
        if not d.is_dir():
            continue
        rows = read_sources(d)
        for p in sorted(d.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts:
                out.append((folder, p.name, *_group(folder, p.name, rows.get(p.name))))
    if not out:
        raise DataError(f"{corpus} has no files in {', '.join(f'{f}/' for f in FOLDERS)}")
    return out


def split_corpus(corpus, held_out_fraction: float, seed: int) -> dict[str, dict[str, list[str]]]:
    """{folder: {"train": [file, ...], "held-out": [...]}}: whole groups to one side, stratified."""
    files = corpus_files(corpus)
    groups = [f"{f}|{g}" for f, _, g, _ in files]
    strata = np.unique([f"{f}|{s}" for f, _, _, s in files], return_inverse=True)[1]
    train, held = split_documents(len(files), held_out_fraction, seed, strata, groups)
    out: dict[str, dict[str, list[str]]] = {}
    for side, idx in zip(SIDES, (train, held)):
        for i in idx:
            out.setdefault(files[i][0], {s: [] for s in SIDES})[side].append(files[i][1])
    return out


def write_split(corpus, out, held_out_fraction: float, seed: int) -> dict:
    """Write OUT/train/ and OUT/held-out/ (symlinks and per-side tables) and OUT/split.json; -> its content."""
    corpus, out = Path(corpus).resolve(), Path(out)
    if not 0 < held_out_fraction < 1:
        raise DataError(f"--held-out-fraction must be between 0 and 1, got {held_out_fraction:g}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder")
    split = split_corpus(corpus, held_out_fraction, seed)
    group_of = {(f, n): g for f, n, g, _ in corpus_files(corpus)}
    report = {"corpus": str(corpus), "held_out_fraction": held_out_fraction, "seed": seed, "folders": {}}
    for folder, sides in split.items():
        for side, names in sides.items():
            d = out / side / folder
            d.mkdir(parents=True)
            for n in names:
                (d / n).symlink_to(corpus / folder / n)
            keep = set(names)
            for table in TABLES:
                src = corpus / folder / table
                if src.is_file():  # header (SOURCES.tsv's) and this side's rows, in the corpus order
                    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
                    head = lines[:1] if lines and lines[0].startswith("file\t") else []
                    (d / table).write_text("".join(head + [x for x in lines[len(head):] if x.split("\t", 1)[0] in keep]),
                                           encoding="utf-8")
        held_groups = sorted({group_of[folder, n] for n in sides["held-out"]})
        train_groups = {group_of[folder, n] for n in sides["train"]}
        report["folders"][folder] = {"train_files": len(sides["train"]), "held_out_files": len(sides["held-out"]),
                                     "train_sources": len(train_groups), "held_out_sources": held_groups}
    (out / "split.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def run_cli(args) -> int:
    r = write_split(args.corpus, args.out, args.held_out_fraction, args.seed)
    for folder, f in r["folders"].items():
        print(f"{folder:7s} train {f['train_files']:5d} files ({f['train_sources']} sources)   held out "
              f"{f['held_out_files']:5d} files ({len(f['held_out_sources'])} sources)")
    print(f"-> {args.out}/train, {args.out}/held-out (what went where: {Path(args.out) / 'split.json'})")
    return 0


def group_sources(shards, corpus) -> int:
    """Give each media document of SHARDS/sources.jsonl made from the corpus folders its "group" (the
    split's source: "video|vtest.avi", ...), which the trainer's held-out split groups by; a document
    is matched by its file's folder and name (the corpus files or links to them). -> documents grouped."""
    from unitok.data.shards import SOURCES

    group = {(f, n): f"{f}|{g}" for f, n, g, _ in corpus_files(corpus) if f != "text"}
    path = Path(shards) / SOURCES
    lines, n = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        p = Path(s["source"])
        if (p.parent.name, p.name) in group:
            s["group"], n = group[p.parent.name, p.name], n + 1
        lines.append(json.dumps(s, ensure_ascii=False) + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return n
