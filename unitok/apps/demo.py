"""`unitok demo`: the whole multimodal path on data that ships with the installed packages.

    unitok demo --out runs/demo                 # --minutes 9 of stages: meant to end within 10 minutes on 2 CPU cores
    unitok demo --out /tmp/demo --tiny          # the same stages with tiny budgets (well under a minute)

Stages (each prints its budget and the time it took):
1. data: scikit-image's photos with captions, 9-frame pan / zoom clips of them, the captions spoken
   by eSpeak NG, the pydoc topics' prose (`unitok.data.embedded`), written as folders and a JSONL
   manifest; a text tokenizer (SentencePiece) on the text and captions;
2. tokenizers: image (VQ-GAN, the `debug` preset), audio (a small EnCodec) and video (the `debug`
   causal 3D VQ) trainers, each for its share of the budget;
3. vocabulary and shards: `UnifiedVocab.from_tokenizers` (what `unitok vocab build` writes) and
   `unitok pretokenize` of every input;
4. the unified model: `unitok train`'s trainer, loss per modality on training and held-out batches,
   for what is left of the budget after the other stages and the generation reserve;
5. generation: every task of `unitok.generation.Pipeline`, files in DIR/generate/<task>/;
6. report: DIR/report.md, DIR/figures.json and the pictures, sounds and curves it shows
   (`unitok.apps.demo_report`).

Without eSpeak NG the demo says so on one line and runs without speech (no audio tokenizer, no
audio tasks).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from unitok.data.embedded import EmbeddedConfig
from unitok.data.pretokenize import PretokenizeConfig

__all__ = ["DemoPlan", "plan", "SHARES", "run", "with_budget", "text_tokenizer_stage", "vqgan_stage", "encodec_stage"]

# Shares of --minutes. The tokenizers stop at their share; the unified model gets what is left when
# it starts, less the generation reserve, so an overrun elsewhere shortens it rather than the run.
# The unbudgeted stages (data, text tokenizer, shards) take the rest (~5%). Measured with the full
# plan on 1 busy core (docs/demo.md): data 3 s, shards 10.5 s, generation 2 s, report 5 s; a training
# step of the image tokenizer 0.4 s, audio 0.7 s, video 0.4 s, unified model < 0.9 s (4,096 tokens).
SHARES = {"image tokenizer": 0.17, "audio tokenizer": 0.14, "video tokenizer": 0.12, "unified model": 0.46,
          "generation and report": 0.06}
OUTPUTS = ("data", "runs", "shards", "generate", "pictures", "audio")  # folders the demo owns in --out


@dataclass
class DemoPlan:
    """Everything one demo run does, by stage; `plan()` builds the full and the tiny one."""

    minutes: float
    tiny: bool
    seed: int
    data: EmbeddedConfig
    policy: PretokenizeConfig
    text_vocab: int
    image: object  # unitok.training.vqgan.TrainConfig
    video: object  # unitok.training.vqgan.TrainConfig
    audio: object  # unitok.training.encodec.EncodecRecipe
    lm: object  # unitok.training.unified.UnifiedConfig
    eval_fraction: float = 0.1  # stratified by modality: each has held-out documents
    text_tokens: int = 48  # text-to-text
    caption_tokens: int = 32  # image-to-text, audio-to-text
    cfg_scale: float = 3.0  # guidance in text-to-image and text-to-audio
    shares: dict = field(default_factory=lambda: dict(SHARES))
    threads: int = 1  # torch CPU threads of the run (set by `run`)
    device: str = "auto"  # every trainer's run.device and the generation pipeline's ("auto": CUDA when present)
    preset: str = "cpu"  # "cpu": sized for 2 CPU cores; "gpu": larger images, clips and model for one GPU

    def torch_device(self) -> str:
        """Where generation runs: "cuda" for --device cuda, or auto with a GPU; else "cpu"."""
        import torch

        return "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"


def plan(minutes: float = 9.0, *, tiny: bool = False, seed: int = 0, threads: int | None = None,
         device: str = "auto", preset: str = "cpu") -> DemoPlan:
    """The stages' settings. Full: 64 px images (16 x 16 codes), 32 px clips of 9 frames (3 x 8 x 8),
    speech at 100 tokens/s, a 4-layer dim-128 model. Tiny: 32 px images, 16 px clips, two photos,
    a 2-layer dim-32 model and a few steps of everything. preset "gpu" (not with tiny): 128 px images
    (32 x 32 codes), 64 px clips (3 x 16 x 16), the same tokenizers with twice the batch, and an
    8-layer dim-512 model (25M parameters with the demo's vocabulary) over rows of 2,048 tokens, batch 16."""
    from unitok.data.crops import CropConfig
    from unitok.model.config import ModelConfig
    from unitok.tokenizers.audio import AudioTokenizerConfig
    from unitok.training.encodec import AudioDataConfig, AudioLossConfig, EncodecRecipe
    from unitok.training.loop import OptimConfig, RunConfig
    from unitok.training.unified import UnifiedConfig
    from unitok.training.vqgan import LossConfig, TrainConfig

    if preset not in ("cpu", "gpu"):
        raise ValueError(f"unknown demo preset {preset!r}; use cpu or gpu")
    gpu = preset == "gpu" and not tiny

    def run(steps: int, log_every: int) -> RunConfig:
        return RunConfig(max_steps=steps if tiny else 1_000_000, seed=seed, threads=threads, log_every=log_every,
                         device=device)

    if tiny:
        data = EmbeddedConfig(photos=2, crops=2, motions=["zoom-in", "pan-right"], voices_per_sentence=1,
                              pydoc_chars=20_000, seed=seed)
        image_px, video_px = 32, 16
    else:
        data = EmbeddedConfig(seed=seed, crop_px=256 if gpu else 128, clip_px=128 if gpu else 64)
        image_px, video_px = (128, 64) if gpu else (64, 32)
    policy = PretokenizeConfig(image_size=image_px, video_size=video_px, video_fps=data.clip_fps,
                               video_frames=data.clip_frames, audio_max_seconds=5.0, seed=seed)
    # image: the debug preset (f4: 64 px -> 16 x 16 codes) with 128 codes, no GroupNorm statistics (they
    # remove each crop's brightness and tint), autoencoder warm-up, then a k-means refit and decoder-only.
    image = TrainConfig(
        modality="image", name="image-tokenizer", preset="debug",
        model={"norm_groups": 0, "quantizer": {"codebook_size": 128, "codebook_dim": 4, "decay": 0.8}},
        data=CropConfig(crop=image_px, batch_size=16 if gpu else 8, min_scale=0.5), loss=LossConfig(l1=0.2, l2=1.0),
        quant_warmup=0.3, refit_at=0.7, refit_tokens=512 if tiny else 16384, ema_weights=0.0, sample_every=0,
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.99), warmup_steps=2 if tiny else 20),
        run=run(5, 1 if tiny else 20))
    video = TrainConfig(
        modality="video", name="video-tokenizer", preset="debug",
        model={"quantizer": {"codebook_size": 128, "codebook_dim": 4, "decay": 0.8}},
        data=CropConfig(crop=video_px, batch_size=8 if gpu else 4, min_scale=0.5, frames=data.clip_frames,
                        frame_stride=1),
        loss=LossConfig(l1=0.2, l2=1.0), quant_warmup=0.3, ema_weights=0.0, sample_every=0,
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.99), warmup_steps=2 if tiny else 20),
        run=run(4, 1 if tiny else 10))
    # audio: 16 kHz, hop 320 (50 frames/s), 2 RVQ levels x 256 codes = 100 tokens/s (0.8 kbps), 24k params
    audio = EncodecRecipe(
        name="audio-tokenizer",
        model=AudioTokenizerConfig(sample_rate=16000, num_filters=8, upsampling_ratios=[8, 5, 4, 2], hidden_size=32,
                                   num_lstm_layers=1, codebook_size=256, levels=2, latent_compand=0.25, decay=0.95,
                                   dead_code_threshold=0.25, quantize_dropout=False),
        data=AudioDataConfig(batch_size=16 if gpu else 8, segment_s=1.0, file_weighting="file"),
        loss=AudioLossConfig(l1=0.1, mel=1.0, corr=4.0, disc=False),
        refit_at=0.75, refit_batches=2 if tiny else 24, calibration_batches=2 if tiny else 16,
        optim=OptimConfig(lr=2e-3, betas=(0.5, 0.9), warmup_steps=2 if tiny else 20),
        run=run(4, 1 if tiny else 25))
    if tiny:
        model = ModelConfig(dim=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=640)
        lm = UnifiedConfig(model=model, seq_len=256, batch_size=4, eval_every=5, eval_batches=4,
                           optim=OptimConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=2),
                           run=replace(run(12, 1), ckpt_every=0))
    elif gpu:
        model = ModelConfig(dim=512, n_layer=8, n_head=8, n_kv_head=4, max_seq_len=2304, z_loss=1e-4)
        lm = UnifiedConfig(model=model, seq_len=2048, batch_size=16, eval_every=100, eval_batches=8,
                           optim=OptimConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=50),
                           run=replace(run(0, 20), ckpt_every=0, ckpt_every_min=0.0))
    else:
        model = ModelConfig(dim=128, n_layer=4, n_head=4, n_kv_head=2, max_seq_len=640, z_loss=1e-4)
        lm = UnifiedConfig(model=model, seq_len=512, batch_size=8, eval_every=100, eval_batches=8,
                           optim=OptimConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=30),
                           run=replace(run(0, 20), ckpt_every=0, ckpt_every_min=0.0))
    return DemoPlan(minutes=minutes, tiny=tiny, seed=seed, data=data, policy=policy, device=device, preset=preset,
                    text_vocab=512 if tiny else 2048, image=image, video=video, audio=audio, lm=lm,
                    text_tokens=16 if tiny else 48, caption_tokens=16 if tiny else 32)


class Stages:
    """Wall-clock time per stage against the run's budget; prints a line at each start and end."""

    def __init__(self, minutes: float, threads: int):
        self.total_s, self.t0, self.rows, self.threads = minutes * 60, time.perf_counter(), [], threads

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.total_s - self.elapsed()

    @contextmanager
    def stage(self, name: str, budget_s: float | None = None):
        import torch

        torch.set_num_threads(self.threads)  # pretokenize and the adaptive tokenizer trainers change it
        b = f" (budget {budget_s:.0f} s)" if budget_s is not None else ""
        print(f"demo: {name}{b} ...", flush=True)
        t = time.perf_counter()
        yield
        dt = time.perf_counter() - t
        self.rows.append({"stage": name, "budget_s": budget_s, "seconds": round(dt, 1)})
        print(f"demo: {name} took {dt:.1f} s ({self.elapsed() / 60:.1f} min so far)", flush=True)


def with_budget(cfg, seconds: float):
    """cfg with run.max_minutes = seconds (tiny runs stop at their step counts first; there it is a guard)."""
    return replace(cfg, run=replace(cfg.run, max_minutes=max(seconds, 1.0) / 60))


def run(args) -> int:
    import torch

    from unitok.data.embedded import write_embedded_data
    from unitok.errors import ConfigError

    tiny = bool(getattr(args, "tiny", False))
    minutes = args.minutes if args.minutes is not None else (1.0 if tiny else 9.0)
    if not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes:g}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    device = getattr(args, "device", "auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch finds no CUDA device (use --device cpu or auto)")
    preset = getattr(args, "preset", "cpu")
    if tiny and preset != "cpu":
        raise ConfigError("--tiny runs the cpu preset only")
    p = plan(minutes, tiny=tiny, seed=args.seed, threads=threads, device=device, preset=preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for d in OUTPUTS:  # the demo starts afresh; nothing else in --out is touched
        shutil.rmtree(out / d, ignore_errors=True)
    for f in ("report.md", "figures.json", "vocab.json", "loss.png"):
        (out / f).unlink(missing_ok=True)
    if threads:
        torch.set_num_threads(threads)
    p.threads = torch.get_num_threads()
    st = Stages(minutes, p.threads)
    print(f"demo: {'tiny mode, ' if tiny else ''}budget {minutes:g} min: " +
          ", ".join(f"{k} {v:.0%}" for k, v in p.shares.items()) + "; data, text tokenizer and shards unbudgeted",
          flush=True)
    S = st.total_s

    with st.stage("data"):
        index = write_embedded_data(out / "data", p.data, log=lambda s: print(f"demo: {s}", flush=True))
        speech = index["speech_error"] is None
        print(f"demo: {len(index['images'])} images of {p.data.photos} photos, {len(index['video'])} clips, "
              f"{len(index['speech'])} utterances ({sum(s['seconds'] for s in index['speech']):.0f} s), "
              f"{index['text_documents']} text documents ({index['text_chars'] / 1e3:.0f}k characters)", flush=True)
    with st.stage("text tokenizer"):
        text_dir = text_tokenizer_stage(out, index, p.text_vocab)
    tok_dirs = {"text": text_dir}
    with st.stage("image tokenizer", p.shares["image tokenizer"] * S):
        tok_dirs["image"] = vqgan_stage(with_budget(p.image, p.shares["image tokenizer"] * S),
                                        out / "data" / "images", out / "runs" / "image-tokenizer")
    if speech:
        with st.stage("audio tokenizer", p.shares["audio tokenizer"] * S):
            tok_dirs["audio"] = encodec_stage(with_budget(p.audio, p.shares["audio tokenizer"] * S),
                                              out / "data" / "speech", out / "runs" / "audio-tokenizer")
    with st.stage("video tokenizer", p.shares["video tokenizer"] * S):
        tok_dirs["video"] = vqgan_stage(with_budget(p.video, p.shares["video tokenizer"] * S),
                                        out / "data" / "video", out / "runs" / "video-tokenizer")

    with st.stage("vocabulary and shards"):
        shards = _shards(out, p, tok_dirs, speech)
    budget = max(st.left() - p.shares["generation and report"] * S, 0.25 * p.shares["unified model"] * S)
    with st.stage("unified model", budget):
        lm_cfg, heldout = _lm_config(p, shards, budget)
        task, summary = _train_lm(lm_cfg, shards, out / "runs" / "unified")
    with st.stage("generation"):
        results = _generate(out, p, index, speech)
    with st.stage("report"):
        from unitok.apps.demo_report import write_report

        figures = write_report(out, p, index, tok_dirs, shards, task, summary, results, st.rows, heldout)
    total = st.elapsed()
    figures["seconds_total"] = round(total, 1)
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"demo: done in {total / 60:.1f} min (budget {minutes:g}); report -> {out / 'report.md'}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------- stages
def text_tokenizer_stage(out: Path, index: dict, vocab_size: int) -> Path:
    """SentencePiece on the pydoc documents and every caption and transcript."""
    from unitok.data.text import train_text_tokenizer

    texts = [json.loads(line)["segments"][0]["text"] for line in (out / "data" / "text.jsonl").read_text().splitlines()]
    texts += sorted({x["caption"] for x in index["images"] + index["video"]} | {x["text"] for x in index["speech"]})
    tok = train_text_tokenizer("\n".join(texts), vocab_size, out / "runs" / "text-tokenizer")
    d = out / "runs" / "text-tokenizer"
    tok.save_pretrained(d)
    print(f"demo: text tokenizer: {tok.vocab_size} pieces", flush=True)
    return d


def vqgan_stage(cfg, data_dir: Path, run_dir: Path) -> Path:
    """An image or video tokenizer trained from `cfg` on data_dir in run_dir; returns its folder (run_dir/final)."""
    from unitok.training.vqgan import train

    train(cfg, data_dir, run_dir)
    return run_dir / "final"


def encodec_stage(recipe, data_dir: Path, run_dir: Path) -> Path:
    """An audio tokenizer trained from `recipe` on data_dir in run_dir; returns its folder (run_dir/final)."""
    from unitok.training.encodec import train

    train(recipe, data_dir, run_dir)
    return run_dir / "final"


def _shards(out: Path, p: DemoPlan, tok_dirs: dict, speech: bool) -> Path:
    """vocab.json (what `unitok vocab build` writes), then `unitok pretokenize` of every input."""
    from unitok.data.pretokenize import pretokenize
    from unitok.data.shards import print_stats
    from unitok.tokenizers.base import load_tokenizer
    from unitok.vocab import UnifiedVocab

    dirs = [tok_dirs[m] for m in ("text", "image", "video", "audio") if m in tok_dirs]
    vocab = UnifiedVocab.from_tokenizers([load_tokenizer(d) for d in dirs])
    vocab.save(out / "vocab.json")
    print(f"demo: {vocab}", flush=True)
    data = out / "data"
    inputs = [data / "text.jsonl", data / "images", data / "video"] + ([data / "speech"] if speech else [])
    stats = pretokenize(inputs, dirs, out / "shards", p.policy)
    print_stats(stats, out / "shards")
    saved = json.loads((out / "shards" / "vocab.json").read_text())["hash"]
    if saved != vocab.hash:
        raise RuntimeError("the shards' vocabulary differs from vocab.json")  # one code path: never expected
    return out / "shards"


def _lm_config(p: DemoPlan, shards_dir: Path, budget_s: float):
    """The unified config for these shards: held-out fraction covering every modality, evaluation
    batches covering the held-out documents, the time budget."""
    from unitok.data.packed import split_shards
    from unitok.data.shards import read_shards

    sh = read_shards(shards_dir)
    f = p.eval_fraction
    _, ev, report = split_shards(sh, f, p.lm.run.seed)  # as the trainer splits
    held_tokens = int(sum(sh.offsets[i + 1] - sh.offsets[i] for i in ev))
    batches = min(16, math.ceil(held_tokens / (p.lm.batch_size * p.lm.seq_len)) + 1)
    cfg = replace(with_budget(p.lm, budget_s), eval_fraction=f, eval_batches=batches)
    print(f"demo: held out {len(ev)} of {len(sh)} documents ({f:.0%}, {held_tokens:,} tokens; "
          + "; ".join(f"{k}: {r}" for k, r in report.items()) + f"), evaluated in {batches} batches", flush=True)
    return cfg, {"fraction": f, "documents": int(len(ev)), "tokens": held_tokens,
                 "train_documents": int(len(sh) - len(ev)), "kinds": report}


def _train_lm(cfg, shards: Path, run_dir: Path):
    from unitok.training.unified import train_unified

    return train_unified(cfg, shards, run_dir)


# ---------------------------------------------------------------------------------------------- generation
def generation_requests(out: Path, p: DemoPlan, index: dict, speech: bool, temporal_factor: int) -> list[dict]:
    """One request per task: its inputs come from the training data (the photo, clip and sentence
    shown in the report); text-to-audio asks for the duration of the spoken caption; the clip given to
    video continuation has 1 + k x the video tokenizer's `temporal_factor` frames."""
    from unitok.data.media import read_video, write_video

    first = index["images"][0]  # the centre crop of the first photo (the cat)
    other = next(x for x in index["images"] if x["centre"] and x["photo"] != first["photo"])
    clip = index["video"][0]
    inputs = out / "generate" / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    given = p.policy.video_frames // 2 // temporal_factor * temporal_factor + 1  # 5 of 9 frames with factor 4
    frames = read_video(out / "data" / clip["file"], max_frames=given, fps=p.policy.video_fps)
    clip_in = write_video(inputs / "clip_start", frames, p.policy.video_fps)
    reqs = [
        dict(task="text-to-text", kw=dict(prompt="The for statement", max_new_tokens=p.text_tokens)),
        dict(task="text-to-image", kw=dict(prompt=first["caption"], cfg=p.cfg_scale), photo=first),
        dict(task="image-to-text", kw=dict(image=out / "data" / first["file"], max_new_tokens=p.caption_tokens),
             reference=first["caption"]),
        dict(task="image-to-image", kw=dict(image=out / "data" / other["file"]), photo=other),
        dict(task="video-continuation", kw=dict(video=clip_in, frames=p.policy.video_frames), clip=clip,
             given_frames=given),
    ]
    if speech:
        said = index["speech"][0]  # the first caption, spoken
        heard = next((s for s in index["speech"] if s["text"] != said["text"]), said)
        seconds = min(math.ceil(said["seconds"] * 10) / 10, p.policy.audio_max_seconds)
        reqs[3:3] = [
            dict(task="text-to-audio", kw=dict(prompt=said["text"], seconds=seconds, cfg=p.cfg_scale), speech=said),
            dict(task="audio-to-text", kw=dict(audio=out / "data" / heard["file"], max_new_tokens=p.caption_tokens),
                 reference=heard["text"], speech=heard),
        ]
    return reqs


def _generate(out: Path, p: DemoPlan, index: dict, speech: bool) -> list[dict]:
    from unitok.generation import Pipeline

    pipe = Pipeline.from_pretrained(out / "runs" / "unified", device=p.torch_device())
    results = []
    for r in generation_requests(out, p, index, speech, pipe.tokenizers["video"].config.temporal_factor):
        res = pipe(r["task"], **r["kw"], seed=p.seed, out=out / "generate" / r["task"], progress=True)
        s = res.samples[0]
        what = repr(s.text[:70]) if s.text is not None else "x".join(map(str, s.media.shape))
        print(f"demo: {r['task']}: {what} in {res.timings['total_s']:.2f} s "
              f"({res.timings['tokens_per_s']:g} tokens/s) -> {s.file}", flush=True)
        results.append({**r, "result": res})
    for task in ("text-to-audio", "audio-to-text"):
        if not speech:
            print(f"demo: {task} skipped (no speech: {index['speech_error']})", flush=True)
    return results


if __name__ == "__main__":  # python -m unitok.apps.demo: the same as `unitok demo`
    from unitok.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
