"""`unitok bench judge`: generation on the scenes task (`unitok.data.scenes`), scored by its judges
(`unitok.bench.judges`), beside a random and a memorising baseline.

    unitok bench judge --data data/scenes --ground-truth --json runs/judges.json

With --ground-truth the outputs scored are the data's own media and texts, so the figures are the
judges' accuracy on exact renders (their floors). Scoring a model run (`unitok bench judge RUN`) comes
with the scenes training recipe and is refused until then.

Tasks (JSON `tasks.<task>`), each on the `seen` and `held_out` items (held out: new colour-shape
combinations, templates or voices; `held_out.by_reason` splits them):
* text_to_image: the image for a caption, judged GenEval-style: `accuracy` (every check that applies
  holds), `object`, `count`, `colour`, `size`, `position` (`judge_image`);
* image_to_text: the caption of an image: `accuracy`, the share of its statements that hold
  (`caption_accuracy`);
* text_to_audio: the recording of a caption: `wer` of the speech judge's transcript against the caption
  (held out: the caption's combination or template; a held-out voice alone does not hold a prompt out);
* audio_to_text: the transcript of a recording: `wer` against its caption;
* video_continuation: the frames after a clip's `prompt_frames`: `accuracy` of the judged direction of
  motion (`speed`: of its speed), judged from the last prompt frame on.
Baselines, with the same keys: `chance` scores each item with the data's output for another item of the
same split (the next one); `nearest_training` with the data's output for the training item closest to
the item's input (captions: shared words and word pairs; images and clips' prompt frames: pixels;
recordings: log-mel spectrograms at a fixed length), which a model that only memorises would reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from unitok.errors import ConfigError
from unitok.reporting import markdown_table, write_json

SCORED = ("seen", "held_out")


@dataclass
class Task:
    name: str
    metric: str  # "accuracy" or "wer"
    kind: str  # the items it is measured on: "image", "clip" or "speech"
    output: Callable  # item -> the data's output for it
    score: Callable  # (item, output) -> a record
    nearest: Callable  # (items, training items) -> the training item nearest to each input
    split: Callable = lambda it: it["split"]  # noqa: E731


def run(args) -> int:
    from unitok.data.scenes import load_scenes

    if args.run is not None:
        raise ConfigError("scoring a model run is not implemented yet (it comes with the scenes training recipe); "
                          "--ground-truth scores the data's own media")
    if not args.ground_truth:
        raise ConfigError("give --ground-truth (scores the data's own media and texts)")
    if args.max_items is not None and args.max_items < 1:
        raise ConfigError(f"--max-items must be >= 1 (got {args.max_items})")
    t0 = time.perf_counter()
    data = load_scenes(args.data)
    report = judge_ground_truth(Path(args.data), data, args.max_items)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(report, args.json)
    print(summary_table(report), end="")
    print(f"-> {args.json} ({report['seconds']:.0f} s)")
    return 0


def judge_ground_truth(root: Path, data: dict, max_items: int | None = None) -> dict:
    """Every task's figures with the data's own outputs in place of a model's."""
    import importlib.metadata as md

    tasks = _tasks(root, data)
    items = {s: {k: [it for it in data["items"] if it["split"] == s and it["kind"] == k]
                 for k in ("image", "clip", "speech")} for s in ("train",) + SCORED}
    report = {"data": str(root), "mode": "ground_truth", "run": None,
              "judges": {"image": "colour components, shape templates, 3x3 grid (unitok.bench.judges)",
                         "video": "largest object's track, least-squares velocity",
                         "speech": f"pocketsphinx {md.version('pocketsphinx')} en-us, JSGF grammar of the captions"},
              "items": {s: {k: len(v) for k, v in items[s].items()} for s in items}, "tasks": {}}
    for t in tasks:
        of_kind = [it for it in data["items"] if it["kind"] == t.kind]
        if not of_kind:
            why = data.get("speech_error") if t.kind == "speech" else None
            report["tasks"][t.name] = {"metric": t.metric, "skipped": f"no {t.kind} items in the data"
                                       + (f" ({why})" if why else "")}
            continue
        test = {s: [it for it in of_kind if t.split(it) == s][:max_items] for s in SCORED}
        report["tasks"][t.name] = _evaluate(t, test, items["train"][t.kind], t.output)
    return report


def _evaluate(task: Task, test: dict, train: list, output: Callable) -> dict:
    """`output` (item -> what is scored) on each split, and the two baselines from the data's outputs."""
    res: dict = {"metric": task.metric}
    base: dict = {"chance": {}, "nearest_training": {}}
    for split, its in test.items():
        records = [task.score(it, output(it)) for it in its]
        res[split] = _aggregate(task.metric, records)
        reasons = sorted({it["reason"] for it in its if it["reason"]})
        if split == "held_out" and len(reasons) > 1:
            res[split]["by_reason"] = {r: _aggregate(task.metric, [x for x, it in zip(records, its)
                                                                   if it["reason"] == r]) for r in reasons}
        others = its[1:] + its[:1] if len(its) > 1 else []
        base["chance"][split] = _aggregate(task.metric, [task.score(it, task.output(o)) for it, o in zip(its, others)])
        near = task.nearest(its, train) if its and train else []
        base["nearest_training"][split] = _aggregate(task.metric, [task.score(it, task.output(nb))
                                                                  for it, nb in zip(its, near)])
    return {**res, **base}


def _aggregate(metric: str, records: list) -> dict:
    from unitok.metrics import wer

    if not records:
        return {metric: None, "n": 0}
    if metric == "wer":
        hyps, refs = zip(*records)
        return {"wer": round(wer(list(hyps), list(refs)), 4), "n": len(records)}
    if isinstance(records[0], dict):  # GenEval checks; a check counts where it applies
        keys = list(records[0])
        out = {"accuracy": round(float(np.mean([r["overall"] for r in records])), 4)}
        for k in keys:
            vals = [r[k] for r in records if r[k] is not None]
            if k != "overall" and vals:
                out[k] = round(float(np.mean(vals)), 4)
        return {**out, "n": len(records)}
    if isinstance(records[0], tuple):  # video: (direction right, speed right)
        d, s = zip(*records)
        return {"accuracy": round(float(np.mean(d)), 4), "speed": round(float(np.mean(s)), 4), "n": len(records)}
    return {"accuracy": round(float(np.mean(records)), 4), "n": len(records)}


# ------------------------------------------------------------------ the tasks on the data
def _tasks(root: Path, data: dict) -> list[Task]:
    from functools import lru_cache

    from unitok.bench.judges import SpeechJudge, caption_accuracy, judge_image, judge_motion
    from unitok.data.scenes import parse_caption

    px = data["config"]["px"]
    speech = None

    @lru_cache(maxsize=None)
    def media(file: str) -> np.ndarray:
        from PIL import Image

        from unitok.data.media import read_video

        f = root / file
        return read_video(f) if f.suffix in (".mp4", ".gif") else np.asarray(Image.open(f).convert("RGB"))

    @lru_cache(maxsize=None)
    def heard(file: str) -> str:
        import soundfile as sf

        nonlocal speech
        speech = speech or SpeechJudge()
        wav, sr = sf.read(root / file, dtype="float32", always_2d=True)
        return speech.transcribe(wav.T, sr)

    def continuation(it):
        return media(it["file"])[it["prompt_frames"] - 1:]

    def motion(it, frames):
        d, s = judge_motion(frames)
        return d == it["direction"], s == it["speed"]

    by_caption = _nearest_by(lambda its: _caption_features([it["caption"] for it in its]))
    return [
        Task("text_to_image", "accuracy", "image", lambda it: media(it["file"]),
             lambda it, img: judge_image(img, parse_caption(it["caption"])), by_caption),
        Task("image_to_text", "accuracy", "image", lambda it: it["caption"],
             lambda it, text: caption_accuracy(text, it["objects"], px),
             _nearest_by(lambda its: np.stack([media(it["file"]).reshape(-1) for it in its]).astype(np.float32))),
        Task("text_to_audio", "wer", "speech", lambda it: heard(it["file"]), lambda it, text: (text, it["caption"]),
             by_caption, split=lambda it: "seen" if it["reason"] == "voice" else it["split"]),  # the caption's split
        Task("audio_to_text", "wer", "speech", lambda it: it["caption"], lambda it, text: (text, it["caption"]),
             _nearest_by(lambda its: np.stack([_audio_features(root / it["file"]) for it in its]))),
        Task("video_continuation", "accuracy", "clip", continuation, motion,
             _nearest_by(lambda its: np.stack([media(it["file"])[:it["prompt_frames"]].reshape(-1)
                                               for it in its]).astype(np.float32))),
    ]


def _nearest_by(features: Callable) -> Callable:
    """(items, training items) -> the training item nearest to each item in `features` space (L2, rows
    in chunks; ties: the first)."""
    def nearest(items: list, train: list) -> list:
        x = features(items + train)  # together: caption features share one vocabulary
        a, b = x[: len(items)], x[len(items):]
        bb = (b ** 2).sum(1)
        out = []
        for i in range(0, len(a), 256):
            d = bb[None, :] - 2 * a[i:i + 256] @ b.T
            out += [train[j] for j in d.argmin(1)]
        return out

    return nearest


def _caption_features(captions: list[str]) -> np.ndarray:
    """Unit tf-idf vectors of words and word pairs (word order matters through the pairs; idf: the words
    that tell captions apart, colours and shapes, weigh more than "a" or "the")."""
    grams = [[*c.split(), *(" ".join(p) for p in zip(c.split(), c.split()[1:]))] for c in captions]
    index = {g: i for i, g in enumerate(sorted({g for gs in grams for g in gs}))}
    x = np.zeros((len(captions), len(index)), np.float32)
    for r, gs in enumerate(grams):
        for g in gs:
            x[r, index[g]] += 1
    x *= np.log(len(captions) / (x > 0).sum(0))[None] + 1
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-6)


def _audio_features(path: Path, frames: int = 32) -> np.ndarray:
    """A recording as its 40-band log-mel spectrogram resampled to `frames` frames (flattened)."""
    import soundfile as sf
    import torch

    from unitok.data.audio import log_mel

    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    m = log_mel(torch.from_numpy(wav.mean(1)), sr, n_fft=512, hop=160, n_mels=40)  # (40, T)
    return torch.nn.functional.interpolate(m[None], size=frames, mode="linear").reshape(-1).numpy()


def summary_table(report: dict) -> str:
    rows = []
    for name, t in report["tasks"].items():
        if "skipped" in t:
            rows.append({"task": name, "metric": t["metric"], "seen": t["skipped"]})
            continue
        m = t["metric"]
        rows.append({"task": name, "metric": m, "seen": t["seen"][m], "held_out": t["held_out"][m],
                     "chance seen": t["chance"]["seen"][m], "chance held_out": t["chance"]["held_out"][m],
                     "nearest seen": t["nearest_training"]["seen"][m],
                     "nearest held_out": t["nearest_training"]["held_out"][m],
                     "n": f"{t['seen']['n']}/{t['held_out']['n']}"})
    cols = ["task", "metric", "seen", "held_out", "chance seen", "chance held_out", "nearest seen",
            "nearest held_out", "n"]
    return markdown_table(rows, cols)
