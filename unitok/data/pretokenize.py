"""Interleaved documents -> memory-mapped token shards, once, before language-model training.

    unitok pretokenize docs.jsonl shards/*.tar folder/ --tokenizer TEXT IMAGE AUDIO --out SHARDS [--workers N] [--resume]

Inputs (any mix, read in the order given; inside a folder or tar in sorted / archive order):
* JSONL manifests: one document per line, {"segments": [{"text": "..."}, {"image": "a.jpg"},
  {"audio": "b.wav"}, {"video": "c.mp4"}]}, media paths relative to the manifest and inside its
  folder (absolute paths, `..` out of it and symlinks out of it are refused unless
  `allow_outside_paths`, the CLI's --allow-outside-paths);
* webdataset tar shards: consecutive members with one key (the name up to its first dot) are a
  sample: a media file and a `.txt` or `.json` ({"text": ...} or {"caption": ...}) text. Read as a
  stream, one sample at a time, never extracted; links and other members that are not regular
  files, members larger than `max_member_mb` and a tar larger than `max_tar_mb` (its file, or the
  bytes read from a compressed one) are refused with a reason;
* folders of media with same-stem `.txt` captions, or a `captions.tsv` / `transcripts.tsv`
  (file <TAB> text) beside them.
For tar and folder pairs the order (text first or media first) is a seeded per-document choice
(`text_first_ratio`), so both directions are learned.

Policy (recorded in stats.json): the media policy of `unitok.data.policy` (images resized and
centre-cropped to `image_size`; video at `video_fps` in clips of `video_frames` frames of
`video_size`; audio at the tokenizer's rate and channels in chunks of at most `audio_max_seconds`),
which `PretokenizeConfig` holds, with its limits (video frames and pixels, recording seconds: checked
against each file's header before decoding). A media file that is a document on its own or with its
caption (folders, tars) becomes one document per clip or chunk when it is split, without its text
(a transcript stays with its audio only when the whole clip fits); inside an interleaved JSONL
document the chunks stay consecutive spans of that document. A document longer than
`max_doc_tokens` is skipped.

SHARDS/: the layout of `unitok.data.shards` (which reads it). Documents are written in input order
whatever the number of workers, and a run resumes from its last committed document (progress.json),
so the output is byte-identical for any --workers and across interruptions; resuming a complete
output changes nothing. Every skipped input or document is in stats.json with its source and a
reason that names the media file; a run that keeps no document is a DataError naming the reasons.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from unitok.data.policy import MediaPolicy, audio_chunks, image_input, load_audio, video_clips
from unitok.data.shards import FILES, OFFSETS, PROGRESS, STATS, TOKENIZERS, VOCAB, print_stats
from unitok.errors import ConfigError, DataError
from unitok.vocab import Modality

__all__ = ["PretokenizeConfig", "pretokenize", "MEDIA_EXTS"]

MEDIA_EXTS = {
    "image": {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a"},
    "video": {".mp4", ".webm", ".mkv", ".mov", ".avi"},
}


@dataclass
class PretokenizeConfig(MediaPolicy):  # the media policy's fields first, then what pretokenize adds
    text_first_ratio: float = 0.5  # tar/folder pairs: probability that the text comes first
    max_doc_tokens: int | None = None  # longer documents are skipped (they cannot fit the context)
    max_image_pixels: int = 64_000_000  # decompression-bomb guard
    max_member_mb: float = 256.0  # tar members larger than this are refused
    max_tar_mb: float = 16384.0  # a tar larger than this (its file, or the bytes read from it) is refused
    allow_outside_paths: bool = False  # JSONL media paths may be absolute or lead out of the manifest's folder
    seed: int = 0


# ------------------------------------------------------------------ enumerating documents
# A document is (source, [segment]) with segments ("text", str) or (kind, Media).
@dataclass
class Media:
    name: str  # for messages: a path, or "archive.tar:member"
    path: str | None = None
    data: bytes | None = None

    def open(self):
        return io.BytesIO(self.data) if self.data is not None else self.path


def _kind(name: str) -> str | None:
    ext = os.path.splitext(name)[1].lower()
    return next((k for k, exts in MEDIA_EXTS.items() if ext in exts), None)


def _pair(source: str, text: str | None, kind: str, media: Media, cfg: PretokenizeConfig) -> tuple:
    if text is None:
        return source, [(kind, media)]
    first = random.Random(f"{cfg.seed}:{source}").random() < cfg.text_first_ratio
    segs = [("text", text), (kind, media)]
    return source, segs if first else segs[::-1]


def iter_documents(inputs: list[str], cfg: PretokenizeConfig, skipped: list) -> Iterator[tuple]:
    """Every document of the inputs, in a deterministic order. Unreadable inputs go to `skipped`."""
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            yield from _folder(p, cfg, skipped)
        elif p.suffix == ".jsonl":
            yield from _jsonl(p, cfg, skipped)
        elif p.suffix == ".tar":
            yield from _tar(p, cfg, skipped)
        elif not p.exists():
            skipped.append({"source": str(p), "reason": "not found"})
        else:
            skipped.append({"source": str(p), "reason": "not a .jsonl manifest, a .tar shard or a folder"})


def _jsonl(p: Path, cfg: PretokenizeConfig, skipped: list) -> Iterator[tuple]:
    try:
        lines = p.read_bytes().split(b"\n")
    except OSError as e:
        skipped.append({"source": str(p), "reason": f"unreadable ({e.strerror})"})
        return
    root = Path(os.path.realpath(p.parent))
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        src = f"{p}:{n}"
        try:
            doc = json.loads(line.decode("utf-8"))
            segs, outside = [], []
            for seg in doc["segments"]:
                (kind, value), = seg.items()
                if kind == "text":
                    segs.append(("text", str(value)))
                elif kind in MEDIA_EXTS:
                    rel = str(value)
                    path = p.parent / rel
                    # realpath resolves `..` and symlinks: a link inside the folder may lead out of it
                    if os.path.isabs(rel) or not Path(os.path.realpath(path)).is_relative_to(root):
                        outside.append(rel)
                    segs.append((kind, Media(str(path), path=str(path))))
                else:
                    raise ValueError(f"unknown segment kind {kind!r}")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            skipped.append({"source": src, "reason": f"malformed line ({type(e).__name__}: {str(e)[:80]})"})
            continue
        if outside and not cfg.allow_outside_paths:
            skipped.append({"source": src, "reason": f"media path outside the manifest's folder ({', '.join(outside)}; "
                                                     "refused unless --allow-outside-paths)"})
            continue
        yield src, segs


def _decode_text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 text (byte {e.start})") from None


def _folder(d: Path, cfg: PretokenizeConfig, skipped: list) -> Iterator[tuple]:
    captions: dict[str, str] = {}
    for tsv in ("captions.tsv", "transcripts.tsv"):
        if (d / tsv).is_file():
            try:
                for line in _decode_text((d / tsv).read_bytes(), str(d / tsv)).splitlines():
                    if "\t" in line:  # file, text[, more columns (e.g. a normalized transcript): ignored]
                        f, t = line.split("\t")[:2]
                        captions[f.strip()] = t.strip()
            except DataError as e:
                skipped.append({"source": str(d / tsv), "reason": str(e).split(": ", 1)[-1]})
    for f in sorted(d.iterdir()):
        kind = _kind(f.name)
        if kind is None or f.name.startswith("."):
            continue
        text = captions.get(f.name, captions.get(f.stem))
        txt = f.with_suffix(".txt")
        if text is None and txt.is_file():
            try:
                text = _decode_text(txt.read_bytes(), str(txt)).strip()
            except DataError as e:
                skipped.append({"source": str(txt), "reason": str(e).split(": ", 1)[-1] + "; media kept without text"})
        yield _pair(str(f), text, kind, Media(str(f), path=str(f)), cfg)


def _tar(p: Path, cfg: PretokenizeConfig, skipped: list) -> Iterator[tuple]:
    """The samples of a webdataset tar as a stream: the members of a sample are consecutive (the
    webdataset convention), so a sample is yielded when the next key starts and only its members are
    held in memory; the data of members that are neither media nor text are never read."""
    member_cap, tar_cap = int(cfg.max_member_mb * 2**20), int(cfg.max_tar_mb * 2**20)
    try:
        size = p.stat().st_size
    except OSError as e:
        skipped.append({"source": str(p), "reason": f"unreadable ({e.strerror})"})
        return
    if size > tar_cap:
        skipped.append({"source": str(p), "reason": f"tar of {size / 2**20:,.0f} MB > max_tar_mb {cfg.max_tar_mb:g} "
                                                    "(refused before reading)"})
        return
    key, members, done = None, {}, set()
    try:
        with tarfile.open(p, "r:*") as tf:
            for m in tf:
                src = f"{p}:{m.name}"
                if m.offset_data + m.size > tar_cap:  # a compressed tar inflates past its file size
                    # the sample being read may continue in this member: it is refused with the rest
                    rest = f"sample {key}" if members else "this member"
                    skipped.append({"source": src, "reason": f"tar over max_tar_mb {cfg.max_tar_mb:g} (refused from "
                                                             f"{rest} on)"})
                    members = {}
                    break
                if not m.isfile():
                    if not m.isdir():
                        what = "symbolic link" if m.issym() else "hard link" if m.islnk() else "not a regular file"
                        skipped.append({"source": src, "reason": f"{what} (refused)"})
                    continue
                if m.size > member_cap:
                    skipped.append({"source": src, "reason": f"member of {m.size / 2**20:,.0f} MB > max_member_mb "
                                                             f"{cfg.max_member_mb:g}"})
                    continue
                base = os.path.basename(m.name)
                if base.startswith(".") or "." not in base:
                    continue
                k, ext = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0]), base.split(".", 1)[1].lower()
                if k != key:
                    if members and (doc := _sample(p, key, members, cfg, skipped)):
                        yield doc
                    done.add(key)
                    key, members = k, {}
                if k in done:
                    skipped.append({"source": src, "reason": "not next to the earlier members of its sample (refused)"})
                    continue
                wanted = _kind(base) or ext in ("txt", "json")
                members[ext] = (m.name, tf.extractfile(m).read() if wanted else None)
    except (tarfile.TarError, OSError, EOFError) as e:
        skipped.append({"source": str(p), "reason": f"unreadable tar ({type(e).__name__}: {str(e)[:80]})"})
    if members and (doc := _sample(p, key, members, cfg, skipped)):
        yield doc


def _sample(p: Path, key: str, members: dict, cfg: PretokenizeConfig, skipped: list) -> tuple | None:
    """One tar sample ({extension: (member name, bytes)}) -> a document, or None (skipped with a reason)."""
    src = f"{p}:{key}"
    media = [(k, n, raw) for ext, (n, raw) in members.items() if (k := _kind("x." + ext))]
    if len(media) != 1:
        skipped.append({"source": src, "reason": f"{len(media)} media files in the sample (need one)"})
        return None
    kind, name, raw = media[0]
    text = None
    try:
        if "txt" in members:
            text = _decode_text(members["txt"][1], f"{p}:{members['txt'][0]}").strip()
        elif "json" in members:
            meta = json.loads(_decode_text(members["json"][1], f"{p}:{members['json'][0]}"))
            text = meta.get("text", meta.get("caption")) if isinstance(meta, dict) else None
    except (DataError, json.JSONDecodeError) as e:
        skipped.append({"source": src, "reason": f"{str(e).split(': ', 1)[-1]}; media kept without text"})
    return _pair(src, text, kind, Media(f"{p}:{name}", data=raw), cfg)


# ------------------------------------------------------------------ tokenizing one document
class Tokenizing:
    """Lives in each worker: the tokenizers, the vocabulary and the policy."""

    def __init__(self, tokenizer_dirs: list[str], cfg: PretokenizeConfig, device: str = "cpu",
                 vocab: dict | None = None):
        import torch

        from unitok.tokenizers.base import load_tokenizer
        from unitok.vocab import UnifiedVocab

        torch.set_num_threads(1)
        self.cfg = cfg
        self.toks = {}
        for d in tokenizer_dirs:
            t = load_tokenizer(d)
            if t.modality in self.toks:
                raise ConfigError(f"two {t.modality} tokenizers given ({d}); one per modality")
            cold = [k for k, v in (t.state_dict().items() if hasattr(t, "state_dict") else ())
                    if k.endswith("initted") and not bool(v.all())]
            if cold:  # its first encode would k-means-initialise the codebook on whatever it sees first
                raise ConfigError(f"{d}: the {t.modality} tokenizer was never trained ({cold[0]} is False); "
                                  "codes would depend on the order of the data")
            self.toks[t.modality] = t
        self.device = torch.device(device)
        for t in self.toks.values():
            if isinstance(t, torch.nn.Module):
                t.to(self.device)
        if vocab is None:
            self.vocab = UnifiedVocab.from_tokenizers(self.toks.values())
        else:  # a given vocabulary (an imported model's id layout), which these tokenizers must build
            self.vocab = UnifiedVocab.from_manifest(vocab, source="--vocab")
            self.vocab.check_tokenizers(self.toks.values(), what="--tokenizer")

    def __call__(self, doc) -> tuple:
        """-> (source, "ok", [Packed]), (source, "split", [Packed per chunk]) or (source, "skip", (media, why)),
        media the name of the media file it is about (None for the document as a whole)."""
        source, segs = doc
        return (source, *self._tokenize(segs))

    def _tokenize(self, segs) -> tuple:
        try:
            out = []
            single = len(segs) == 1 or (len(segs) == 2 and sum(k == "text" for k, _ in segs) == 1)
            for kind, value in segs:
                if kind == "text":
                    if "text" not in self.toks:
                        raise DataError("no text tokenizer given")
                    out.append({"text": self.toks["text"].encode(value)})
                    continue
                try:
                    if kind not in self.toks:
                        raise DataError(f"no {kind} tokenizer given")
                    chunks = self._encode(kind, self.inputs(kind, value))
                except (DataError, ValueError, RuntimeError) as e:
                    return "skip", (value.name, _why(e, value.name))
                if single and len(chunks) > 1:  # a document per chunk; a transcript only with a whole clip
                    return "split", [self.vocab.pack([{kind: c}]) for c in chunks]
                out.extend({kind: c} for c in chunks)
            packed = self.vocab.pack(out)
        except (DataError, ValueError, RuntimeError) as e:
            return "skip", (None, _why(e))
        return "ok", [packed]

    def _encode(self, kind: str, inputs: list) -> list:
        import torch

        with torch.no_grad():
            return [self.toks[kind].encode(x.to(self.device))[0].cpu().numpy() for x in inputs]

    def inputs(self, kind: str, m: Media) -> list:
        """The model inputs of one media file after the policy (decoded, resampled, resized, cut into
        chunks or clips), each with a batch dimension of 1: what the tokenizer encodes."""
        return getattr(self, f"_{kind}_inputs")(m)

    def _image_inputs(self, m: Media) -> list:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.cfg.max_image_pixels
        try:
            return [image_input(m.open(), self.cfg.image_size)]  # (1, 3, S, S)
        except Image.DecompressionBombError as e:
            raise DataError(f"image over max_image_pixels (refused: {e})") from None
        except DataError as e:
            why = str(e).split(": ", 1)[-1]
            raise DataError(why if why.startswith("too small") else f"unreadable image ({why.split('(', 1)[-1].rstrip(')')})") from None

    def _audio_inputs(self, m: Media) -> list:
        tok = self.toks["audio"]
        wav = load_audio(m.open(), tok, m.name, self.cfg)
        if wav.abs().max() < 1e-4:
            raise DataError("silent audio")
        return audio_chunks(wav, tok, self.cfg)

    def _video_inputs(self, m: Media) -> list:
        return video_clips(m.open(), self.cfg, m.name)


def _why(e: Exception, name: str | None = None) -> str:
    """A skip reason: a DataError's message less the file name it may start with (the reason puts the
    name first itself), or another error's type and first line."""
    if not isinstance(e, DataError):
        return f"{type(e).__name__} ({str(e).splitlines()[0][:160]})" if str(e) else type(e).__name__
    why = str(e)
    return why[len(name) + 2:] if name and why.startswith(f"{name}: ") else why


def _reason_kind(why: str) -> str:
    """What skip reasons are counted by: the reason before its details, numbers as N
    ("unreadable image (truncated)" -> "unreadable image", "member of 300 MB > ..." -> "member of N MB > ...")."""
    return re.sub(r"(?<![\w-])\d[\d,.]*", "N", why.split(" (")[0].split(";")[0])  # not the 8 of UTF-8


def _nothing_kept(stats: dict, out: Path) -> DataError:
    reasons = ", ".join(f"{k} ({n})" for k, n in stats["skip_reasons"].items()) or "the inputs hold no document"
    return DataError(f"{out}: no document kept; skipped: {reasons} (each skip with its source in {out / STATS})")


# ------------------------------------------------------------------ the run
_worker: Tokenizing | None = None


def _init(dirs, cfg, vocab):
    global _worker
    _worker = Tokenizing(dirs, cfg, vocab=vocab)


def _work(doc):
    return _worker(doc)


def _distributed() -> tuple[int, int, int] | None:
    """(world, rank, local rank) under torchrun (the process group is started here, gloo), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


def _gathered(todo, fn, world: int, rank: int, per_rank: int = 2):
    """Every rank's results in document order: in blocks of world x per_rank documents, rank r works on
    the documents r, r + world, ... of the block, and every rank receives all of them (all_gather)."""
    import itertools

    import torch.distributed as dist

    it = iter(todo)
    while True:
        block = list(itertools.islice(it, world * per_rank))
        got: list = [None] * world
        dist.all_gather_object(got, [fn(d) for j, d in enumerate(block) if j % world == rank])
        for j in range(len(block)):
            yield got[j % world][j // world]
        if len(block) < world * per_rank:
            return


def _keeps_torch_threads(fn):
    """Tokenizing encodes with one thread per process; the caller gets its own thread count back, so a
    training run started in the same process after pretokenizing (the demo, pretrain_shared) is not left
    on one thread."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        n = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return wrapper


@_keeps_torch_threads
def pretokenize(inputs: list[str], tokenizer_dirs: list[str], out, cfg: PretokenizeConfig | None = None, *,
                workers: int = 0, resume: bool = False, progress: bool = True, commit_every: int = 64,
                stop_after: int | None = None, vocab: dict | None = None) -> dict:
    """Write SHARDS; returns the stats. `stop_after` documents (tests) simulates an interruption.
    `vocab`: a vocabulary manifest the shards take (the tokenizers must build it), e.g. an imported
    model's with its own id layout; default: the tokenizers' unitok vocabulary.

    Under torchrun every rank tokenizes a share of the documents (on its GPU where there is one) and
    rank 0 writes them in order: the files are the same as with one process. `workers` must then be
    0; ranks other than 0 return None."""
    cfg = cfg or PretokenizeConfig()
    out = Path(out)
    prog_path = out / PROGRESS
    ddp = _distributed()
    world, rank, local = ddp or (1, 0, 0)
    main = rank == 0
    if ddp and workers:
        raise ConfigError("--workers under torchrun: every rank is one worker; leave --workers at 0")
    if out.exists() and any(out.iterdir()) and not resume:
        raise DataError(f"{out} is not empty; pass --resume to continue an interrupted run or choose another --out")
    import torch

    device = f"cuda:{local}" if ddp and torch.cuda.is_available() else "cpu"
    main_tok = Tokenizing(tokenizer_dirs, cfg, device, vocab)
    given, vocab = vocab, main_tok.vocab
    identities = {m: t.identity() for m, t in main_tok.toks.items()}
    dtype = vocab.id_dtype
    policy = asdict(cfg)
    if resume and (out / STATS).is_file() and not prog_path.is_file():
        return _complete(out, inputs, policy, identities, main, progress)
    done, sizes = 0, [0, 0, 8, 0]  # FILES: tokens, modality, offsets (its first 0), sources
    stats = {"documents": 0, "tokens": 0, "tokens_per_modality": {}, "skipped": [], "skip_reasons": {},
             "split_documents": 0}
    if resume and prog_path.is_file():
        prog = json.loads(prog_path.read_text())
        if prog["policy"] != policy or prog["vocab_hash"] != vocab.hash or prog["inputs"] != [str(i) for i in inputs]:
            raise ConfigError(f"{out}: --resume with different inputs, tokenizers or policy than the interrupted run")
        done, sizes, stats = prog["docs_done"], prog["sizes"], prog["stats"]
    if ddp:
        import torch.distributed as dist

        dist.barrier()  # every rank has read the state before rank 0 writes
    if not main:
        return _follow(iter_documents(list(map(str, inputs)), cfg, []), main_tok, world, rank, done, stop_after)
    out.mkdir(parents=True, exist_ok=True)
    if not (resume and prog_path.is_file()):
        vocab.save(out / VOCAB)
        for m, t in main_tok.toks.items():
            shutil.rmtree(out / TOKENIZERS / m, ignore_errors=True)
            t.save_pretrained(out / TOKENIZERS / m)
        (out / OFFSETS).write_bytes(np.zeros(1, np.int64).tobytes())
        for f in FILES:
            if f != OFFSETS:
                (out / f).write_bytes(b"")
    for f, size in zip(FILES, sizes):  # drop what was written after the last commit
        with open(out / f, "r+b") as fh:
            fh.truncate(size)
    files = [open(out / f, "ab") for f in FILES]
    n_tokens = sizes[0] // np.dtype(dtype).itemsize
    skipped_inputs: list = []
    docs = iter_documents(list(map(str, inputs)), cfg, skipped_inputs)
    t0, last_print, seen = time.time(), time.time(), done  # a Ctrl-C before the next document commits `done`

    def commit():
        for fh in files:
            fh.flush()
            os.fsync(fh.fileno())
        tmp = prog_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"docs_done": seen, "sizes": [fh.tell() for fh in files], "stats": stats,
                                   "policy": policy, "vocab_hash": vocab.hash, "inputs": [str(i) for i in inputs]}))
        os.replace(tmp, prog_path)

    def count(why: str):
        kind = _reason_kind(why)
        stats["skip_reasons"][kind] = stats["skip_reasons"].get(kind, 0) + 1

    def skip(source: str, why: str, media: str | None = None):
        stats["skipped"].append({"source": source, "reason": f"{media}: {why}" if media else why})
        count(why)

    def write(packed, source: dict):
        nonlocal n_tokens
        if cfg.max_doc_tokens and len(packed.ids) > cfg.max_doc_tokens:
            return f"{len(packed.ids)} tokens > max_doc_tokens {cfg.max_doc_tokens}"
        files[0].write(packed.ids.astype(dtype).tobytes())
        files[1].write(packed.modality.astype(np.uint8).tobytes())
        n_tokens += len(packed.ids)
        files[2].write(np.array([n_tokens], np.int64).tobytes())
        files[3].write((json.dumps(source) + "\n").encode())  # sources.jsonl: what the held-out split groups by
        stats["documents"] += 1
        stats["tokens"] += len(packed.ids)
        tpm = stats["tokens_per_modality"]
        for m, c in zip(Modality, np.bincount(packed.modality, minlength=len(Modality))):
            if c:
                tpm[m.name.lower()] = tpm.get(m.name.lower(), 0) + int(c)
        return None

    pool = None
    try:
        import itertools

        todo = itertools.islice(docs, done, None)
        if ddp:
            results = _gathered(todo, main_tok, world, rank)
        elif workers > 0:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, _init, (list(map(str, tokenizer_dirs)), cfg, given))
            results = pool.imap(_work, todo, chunksize=4)
        else:
            results = map(main_tok, todo)
        for doc, kind, payload in results:
            seen += 1
            if kind == "skip":
                media, why = payload
                skip(doc, why, media)
            else:
                if kind == "split":
                    stats["split_documents"] += 1
                for k, packed in enumerate(payload):  # a split file: every chunk records its index
                    why = write(packed, {"source": doc, "chunk": k} if kind == "split" else {"source": doc})
                    if why:
                        skip(doc, why)
            if seen % commit_every == 0:
                commit()
            if progress and time.time() - last_print > 10:
                last_print = time.time()
                dt = time.time() - t0
                print(f"pretokenize: {seen} documents, {stats['tokens']} tokens ({(seen - done) / dt:.1f} docs/s, "
                      f"{(n_tokens - sizes[0] // np.dtype(dtype).itemsize) / dt:.0f} tokens/s)", file=sys.stderr,
                      flush=True)
            if stop_after is not None and seen - done >= stop_after:
                commit()
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        commit()
        raise
    finally:
        if pool is not None:
            pool.terminate()
        for fh in files:
            fh.close()
    stats["skipped"] = skipped_inputs + stats["skipped"]  # unreadable inputs (manifests, archives) first
    for x in skipped_inputs:
        count(x["reason"])
    stats["skip_reasons"] = dict(sorted(stats["skip_reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    stats.update(vocab_size=vocab.size, dtype=np.dtype(dtype).name, policy=policy, inputs=[str(i) for i in inputs],
                 tokenizers=identities,
                 timings={"seconds": round(time.time() - t0, 2), "workers": workers, "processes": world})
    (out / STATS).write_text(json.dumps(stats, indent=1) + "\n")
    prog_path.unlink(missing_ok=True)
    if not stats["documents"]:
        raise _nothing_kept(stats, out)
    return stats


def _complete(out: Path, inputs, policy: dict, identities: dict, main: bool, progress: bool) -> dict | None:
    """--resume on a complete output: its stats, nothing written, when it was made from these inputs,
    tokenizers and policy (a ConfigError otherwise)."""
    stats = json.loads((out / STATS).read_text())
    same = json.loads(json.dumps([[str(i) for i in inputs], policy, identities]))  # as stats.json holds them
    if [stats.get("inputs"), stats.get("policy"), stats.get("tokenizers")] != same:
        raise ConfigError(f"{out} is complete, from other inputs, tokenizers or policy; choose another --out")
    if not stats["documents"]:
        raise _nothing_kept(stats, out)
    if main and progress:
        print(f"pretokenize: {out} is already complete (stats.json); nothing to do", file=sys.stderr, flush=True)
    return stats if main else None


def _follow(docs, tok, world: int, rank: int, done: int, stop_after: int | None) -> None:
    """A rank other than 0: tokenize its share of the documents rank 0 writes, in step with it."""
    import itertools

    seen = 0
    for _ in _gathered(itertools.islice(docs, done, None), tok, world, rank):
        seen += 1
        if stop_after is not None and seen >= stop_after:
            raise KeyboardInterrupt


# ------------------------------------------------------------------ CLI
def _vocab_manifest(path) -> dict | None:
    """--vocab: a vocab.json, or a run or checkpoint directory (its vocab.json)."""
    if path is None:
        return None
    from unitok.checkpoint import VOCAB_JSON, resolve
    from unitok.vocab import UnifiedVocab

    p = Path(path)
    return UnifiedVocab.load(p if p.is_file() else resolve(p) / VOCAB_JSON).manifest()


def run_cli(args) -> int:
    from unitok.config import from_dict, parse_overrides

    cfg = from_dict(PretokenizeConfig, parse_overrides(args.set or []), source="--set")
    cfg.allow_outside_paths |= args.allow_outside_paths
    try:
        stats = pretokenize(args.data, args.tokenizer, args.out, cfg, workers=args.workers, resume=args.resume,
                            vocab=_vocab_manifest(args.vocab))
    except KeyboardInterrupt:
        print("unitok: interrupted; the documents done so far are kept: continue with the same command and "
              "--resume", file=sys.stderr)
        return 130
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()  # gloo can abort when one rank tears the group down while another still uses it
                dist.destroy_process_group()
    if stats is not None:  # rank 0 (or the only process)
        print_stats(stats, args.out)
    return 0
