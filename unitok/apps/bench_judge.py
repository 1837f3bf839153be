"""`unitok bench judge`: generation on the scenes task (`unitok.data.scenes`), scored by its judges
(`unitok.bench.judges`), beside a random and a memorising baseline.

    unitok bench judge --data data/scenes --ground-truth --json runs/judges.json
    unitok bench judge runs/scenes/run --data data/scenes --json runs/scenes/judge.json --out runs/scenes/judge

With --ground-truth the outputs scored are the data's own media and texts, so the figures are the
judges' accuracy on exact renders (their floors). With RUN they are a unified run's generations
(`judge_run`, the discrete head; --head diffusion is refused until that head exists), with the same
JSON keys; a task the run has no tokenizer for is `skipped`, with the reason.

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
from functools import lru_cache
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

    if args.head == "diffusion":
        raise ConfigError("--head diffusion: the diffusion head does not exist yet; score the discrete head "
                          "(--head discrete)")
    if (args.run is not None) == bool(args.ground_truth):
        raise ConfigError("give RUN (a unified run to score) or --ground-truth (the data's own media), one of them")
    if args.max_items is not None and args.max_items < 1:
        raise ConfigError(f"--max-items must be >= 1 (got {args.max_items})")
    t0 = time.perf_counter()
    data = load_scenes(args.data)
    if args.run is not None:
        report = judge_run(args.run, Path(args.data), data, args.max_items, out=args.out, seed=args.seed, cfg=args.cfg)
    else:
        report = judge_ground_truth(Path(args.data), data, args.max_items)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(report, args.json)
    print(summary_table(report), end="")
    print(f"-> {args.json} ({report['seconds']:.0f} s)")
    return 0


def judge_ground_truth(root: Path, data: dict, max_items: int | None = None) -> dict:
    """Every task's figures with the data's own outputs in place of a model's."""
    tasks = _tasks(root, data)
    return _judge(root, data, tasks, {t.name: t.output for t in tasks}, max_items,
                  {"mode": "ground_truth", "run": None})


# the tokenizer (beside text) each task needs
MEDIA_OF_TASK = {"text_to_image": "image", "image_to_text": "image", "text_to_audio": "audio",
                 "audio_to_text": "audio", "video_continuation": "video"}
GRID_ITEMS = 8  # text-to-image pictures per split in the grid
CAPTION_TOKENS = 48  # text pieces a caption or transcript may take (the longest captions are 19 words)


def judge_run(run, root: Path, data: dict, max_items: int | None = None, *, out=None, seed: int = 0,
              cfg: float = 1.0) -> dict:
    """Every task's figures for a unified run's outputs (`unitok.generation.Pipeline`, the discrete head):
    text greedily (captions, transcripts), media codes sampled with the pipeline's defaults (seed `seed`,
    guidance `cfg`); images and clips at the run's training policy's sizes, speech as long as the
    caption's recording (at most the policy's audio_max_seconds). A task whose modality the run has no
    tokenizer for is skipped with the reason. With `out`: OUT/text_to_image.png, the ground truth (top
    row of each pair) and the generated image for the first seen and held-out captions."""
    import tempfile

    from unitok.generation import Pipeline
    from unitok.generation.sample import Sampling

    pipe = Pipeline.from_pretrained(run)
    greedy = {"text": Sampling(temperature=0.0)}
    tasks = _tasks(root, data)
    pictures: dict = {}
    tmp = tempfile.TemporaryDirectory(prefix="bench-judge-")  # the prompt clips

    def generate(task: str, **kw):
        return pipe(task, seed=seed, sampling=greedy, **kw).samples[0]

    def text_to_image(it):
        img = generate("text-to-image", prompt=it["caption"], cfg=cfg).media
        pictures[it["id"]] = img
        return img

    def text_to_audio(it):
        tok = pipe.tokenizers["audio"]
        s = generate("text-to-audio", prompt=it["caption"], cfg=cfg,
                     seconds=min(it["seconds"], pipe.policy.audio_max_seconds))
        return _speech_judge().transcribe(s.media, tok.config.sample_rate)

    def continuation(it):
        from unitok.data.media import read_video, write_video

        given = write_video(Path(tmp.name) / it["id"], read_video(root / it["file"])[:it["prompt_frames"]],
                            data["config"]["fps"])
        frames = generate("video-continuation", video=given, frames=data["config"]["frames"], cfg=cfg).media
        return frames[it["prompt_frames"] - 1:]

    made = {"text_to_image": text_to_image,
            "image_to_text": lambda it: generate("image-to-text", image=root / it["file"],
                                                 max_new_tokens=CAPTION_TOKENS).text.strip(),
            "text_to_audio": text_to_audio,
            "audio_to_text": lambda it: generate("audio-to-text", audio=root / it["file"],
                                                 max_new_tokens=CAPTION_TOKENS).text.strip(),
            "video_continuation": continuation}
    outputs = {}
    for name, needs in MEDIA_OF_TASK.items():
        missing = [m for m in ("text", needs) if m not in pipe.tokenizers]
        outputs[name] = (f"the run has no {missing[0]} tokenizer (its vocabulary has "
                         f"{', '.join(sorted(pipe.tokenizers))})") if missing else made[name]
    with tmp:
        report = _judge(root, data, tasks, outputs, max_items,
                        {"mode": "run", "run": str(run), "head": "discrete", "seed": seed, "cfg": cfg})
    if out is not None and pictures:
        report["grid"] = _grid(root, data, pictures, Path(out))
    return report


@lru_cache(maxsize=1)
def _speech_judge():
    """One pocketsphinx decoder per process (loading its model takes a second)."""
    from unitok.bench.judges import SpeechJudge

    return SpeechJudge()


def _grid(root: Path, data: dict, pictures: dict, out: Path) -> dict:
    """OUT/text_to_image.png: per split, a row of ground-truth renders above the generated images (the
    first GRID_ITEMS captions of the split); returns the file and the captions, column by column."""
    from PIL import Image

    items = {it["id"]: it for it in data["items"]}
    shown = {s: [i for i in pictures if items[i]["split"] == s][:GRID_ITEMS] for s in SCORED}
    cols = max(len(ids) for ids in shown.values())
    rows, captions = [], {}
    for split, ids in shown.items():
        if not ids:
            continue
        captions[split] = [items[i]["caption"] for i in ids]
        side = pictures[ids[0]].shape[0]
        truth = [np.asarray(Image.open(root / items[i]["file"]).convert("RGB").resize((side, side))) for i in ids]
        pad = [np.zeros((side, side, 3), np.uint8)] * (cols - len(ids))  # black where a split has fewer
        rows += [np.concatenate(truth + pad, 1), np.concatenate([pictures[i] for i in ids] + pad, 1)]
    out.mkdir(parents=True, exist_ok=True)
    f = out / "text_to_image.png"
    Image.fromarray(np.concatenate(rows, 0)).save(f)
    return {"file": str(f), "rows": "per split (seen, held_out): ground truth, then generated", "captions": captions}


def _judge(root: Path, data: dict, tasks: list, outputs: dict, max_items: int | None, head: dict) -> dict:
    """The report: per task, `outputs[task]` (item -> what is scored, or why the task is skipped) on each
    scored split beside the baselines."""
    import importlib.metadata as md

    items = {s: {k: [it for it in data["items"] if it["split"] == s and it["kind"] == k]
                 for k in ("image", "clip", "speech")} for s in ("train",) + SCORED}
    report = {"data": str(root), **head,
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
        if isinstance(outputs[t.name], str):
            report["tasks"][t.name] = {"metric": t.metric, "skipped": outputs[t.name]}
            continue
        test = {s: [it for it in of_kind if t.split(it) == s][:max_items] for s in SCORED}
        report["tasks"][t.name] = _evaluate(t, test, items["train"][t.kind], outputs[t.name])
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
    from unitok.bench.judges import caption_accuracy, judge_image, judge_motion
    from unitok.data.scenes import parse_caption

    px = data["config"]["px"]

    @lru_cache(maxsize=None)
    def media(file: str) -> np.ndarray:
        from PIL import Image

        from unitok.data.media import read_video

        f = root / file
        return read_video(f) if f.suffix in (".mp4", ".gif") else np.asarray(Image.open(f).convert("RGB"))

    @lru_cache(maxsize=None)
    def heard(file: str) -> str:
        import soundfile as sf

        wav, sr = sf.read(root / file, dtype="float32", always_2d=True)
        return _speech_judge().transcribe(wav.T, sr)

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
