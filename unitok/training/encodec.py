"""Train an EnCodec audio tokenizer from a recipe (`unitok tokenizer train`, `modality: audio`).

    unitok tokenizer train tokenizers/audio-encodec-16k/config.yaml --data DIR --out OUT [--resume]

Each step draws random segments from the folder (resampled to the model rate), reconstructs
them through the RVQ, and minimises L1 + multi-scale mel + negative SI-SNR + commitment
(+ MS-STFT discriminator hinge and feature matching once `disc_start` of the run has passed),
optionally through EnCodec's loss balancer. `minutes` bounds the run by wall-clock time; the
learning-rate schedule and `disc_start` follow progress = max(step / steps, elapsed / budget).

OUT/checkpoint.pt (resume state, loaded with weights_only=True), OUT/log.jsonl,
OUT/final/ (save_pretrained), OUT/summary.json.
Runs under torchrun (DDP; gloo on CPU, NCCL on GPU), with bf16 autocast on GPU.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import torch

from unitok.config import from_dict, to_dict
from unitok.errors import CheckpointError, ConfigError
from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig

__all__ = ["EncodecTrainConfig", "EncodecRecipe", "train", "train_from_recipe"]


@dataclass
class EncodecTrainConfig:
    steps: int = 100000  # upper bound on optimizer steps
    minutes: float | None = None  # wall-clock budget; schedules follow it when set
    batch_size: int = 8  # per process
    segment_s: float = 1.0
    file_weighting: Literal["length", "file"] = "length"  # draw files by duration or equally often
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # loss weights
    l1: float = 0.1
    mel: float = 1.0
    sisnr: float = 0.0  # per dB of negative SI-SNR
    corr: float = 1.0  # 1 - correlation(y, x): the waveform-matching term that lifts SI-SNR
    adv: float = 1.0
    feat: float = 1.0
    mel_n_ffts: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    mel_bands: int = 64
    balancer: bool = False
    # discriminator
    disc: bool = True
    disc_start: float = 0.5  # fraction of the run before the adversarial losses switch on
    disc_n_ffts: list[int] = field(default_factory=lambda: [1024, 512, 256])
    disc_filters: int = 16
    disc_lr: float = 3e-4
    # codebook refit: at this fraction of the run, fix the latent BatchNorm statistics, refit every
    # RVQ codebook by residual k-means on `refit_batches` batches of latents, then train only the
    # decoder on the frozen codes (high codebook usage; no codebook drift). null: never.
    refit_at: float | None = 0.8
    refit_batches: int = 48
    calibration_batches: int = 32  # batches for the final latent BatchNorm statistics
    # misc
    bf16: bool = True  # autocast on CUDA only; CPU runs in fp32
    threads: int | None = None  # torch CPU threads (None: torch default)
    log_every: int = 25
    ckpt_every: int = 200
    seed: int = 0


@dataclass
class EncodecRecipe:
    modality: str = "audio"
    name: str = "audio-encodec"
    model: AudioTokenizerConfig = field(default_factory=AudioTokenizerConfig)
    train: EncodecTrainConfig = field(default_factory=EncodecTrainConfig)


def _freeze_codes(model, clips, cfg, seg, gen, main) -> bool:
    """Calibrate the latent norm, refit the codebooks by k-means, freeze encoder and codebooks."""
    model.calibrate_latent_norm(clips.sample(cfg.batch_size, seg, gen, weighting=cfg.file_weighting) for _ in range(cfg.calibration_batches))
    usage = model.refit_codebooks(clips.sample(cfg.batch_size, seg, gen, weighting=cfg.file_weighting) for _ in range(cfg.refit_batches))
    _broadcast_buffers(model)  # every rank uses rank 0's statistics and codebooks
    _set_frozen(model)
    if main:
        print(f"\nrefit codebooks (usage on the fit data per level: {', '.join(f'{u:.0%}' for u in usage)}); "
              f"training the decoder only from now on", flush=True)
    return True


def _set_frozen(model) -> None:
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.encoder.eval()
    if model.latent_norm is not None:
        model.latent_norm.eval()


def _broadcast_buffers(model) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b.data, 0)


def _all_reduce_grads(params) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


def train_from_recipe(args, data: dict) -> int:
    recipe = from_dict(EncodecRecipe, data, source=str(args.config))
    if recipe.modality != "audio":
        raise ConfigError(f"{args.config}: modality must be 'audio' for the EnCodec trainer")
    train(recipe, args.data, args.out, resume=getattr(args, "resume", False))
    return 0


def _resume_key(recipe: dict) -> dict:
    # what must match to resume: everything but the run length and logging cadence
    train = {k: v for k, v in recipe["train"].items() if k not in ("steps", "minutes", "log_every", "ckpt_every", "threads")}
    return {**recipe, "train": train}


def _lr_factor(progress: float, step: int, cfg: EncodecTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(recipe: EncodecRecipe, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          progress_bar: bool = True) -> dict:
    """Train and save OUT/final. Returns the summary dict (also written to OUT/summary.json)."""
    import torch.distributed as dist
    from tqdm import tqdm

    from unitok.data.audio import AudioClips
    from unitok.training.audio_losses import (LossBalancer, MultiScaleSTFTDiscriminator, ReconstructionLoss,
                                              discriminator_loss, feature_matching_loss, generator_adv_loss)

    cfg, mcfg = recipe.train, recipe.model
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main = rank == 0
    ckpt_path = out / "checkpoint.pt"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists() and not resume:
            raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue or choose another --out")
    if resume and not ckpt_path.is_file():
        raise CheckpointError(f"--resume: no checkpoint.pt in {out}")

    torch.manual_seed(cfg.seed + rank)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    clips = AudioClips(data_dir, mcfg.sample_rate, mcfg.channels, progress=progress_bar and main)
    if main:
        print(f"data: {len(clips.clips)} files, {clips.seconds:.1f} s; skipped {clips.skipped_unreadable} unreadable, "
              f"{clips.skipped_silent} silent" + "".join(f"\n  skipped {k}: {v}" for k, v in clips.skipped.items()), flush=True)

    model = AudioTokenizer(mcfg).to(device).train()
    rec_loss = ReconstructionLoss(mcfg.sample_rate, cfg.mel_n_ffts, cfg.mel_bands).to(device)
    disc = MultiScaleSTFTDiscriminator(mcfg.channels, cfg.disc_n_ffts, cfg.disc_filters).to(device) if cfg.disc else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=cfg.betas) if disc is not None else None
    balancer = LossBalancer({"l1": cfg.l1, "mel": cfg.mel, "sisnr": cfg.sisnr, "corr": cfg.corr, "adv": cfg.adv, "feat": cfg.feat}) \
        if cfg.balancer else None

    step, elapsed_before, frozen = 0, 0.0, False
    if resume:
        state = torch.load(str(ckpt_path), map_location=device, weights_only=True)
        if _resume_key(state["recipe"]) != _resume_key(to_dict(recipe)):
            raise CheckpointError(f"{ckpt_path}: was written by a different recipe; resume with the same config "
                                  f"(only train.steps, train.minutes, train.log_every, train.ckpt_every may change)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["opt_d"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        frozen = bool(state.get("frozen", False))
        if frozen:
            _set_frozen(model)
        gen.set_state(state["gen"])
        if main:
            print(f"resumed from step {step} ({elapsed_before / 60:.1f} min)", flush=True)

    gmodel = model
    if world > 1:
        gmodel = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if disc is not None:
            disc = torch.nn.parallel.DistributedDataParallel(disc, device_ids=[device.index] if device.type == "cuda" else None)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and device.type == "cuda") else nullcontext()

    seg = int(cfg.segment_s * mcfg.sample_rate)
    budget = cfg.minutes * 60 if cfg.minutes else None
    t0 = time.time()

    def progress_now() -> float:
        p = step / cfg.steps
        if budget:
            p = max(p, (elapsed_before + time.time() - t0) / budget)
        return p

    def save_checkpoint():
        if not main:
            return
        state = {"recipe": to_dict(recipe), "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "elapsed": elapsed_before + time.time() - t0, "gen": gen.get_state(), "frozen": frozen}
        if disc is not None:
            d = disc.module if hasattr(disc, "module") else disc
            state["disc"], state["opt_d"] = d.state_dict(), opt_d.state_dict()
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, str(tmp))
        tmp.replace(ckpt_path)

    log = open(out / "log.jsonl", "a") if main else None
    bar = tqdm(total=cfg.steps if not budget else 1000, disable=not (progress_bar and main),
               desc="train audio", unit="step" if not budget else "‰",
               initial=step if not budget else int(1000 * min(1.0, progress_now())))
    last_bar = bar.n
    while True:
        p = progress_now()
        stop = torch.tensor([float(step >= cfg.steps or p >= 1.0)], device=device)
        if world > 1:  # rank 0's clock decides, so every rank stops at the same step
            dist.broadcast(stop, 0)
        if stop.item():
            break
        lr_f = _lr_factor(p, step, cfg)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_f
        use_adv = disc is not None and p >= cfg.disc_start
        if cfg.refit_at is not None and p >= cfg.refit_at and not frozen:
            frozen = _freeze_codes(model, clips, cfg, seg, gen, main)
        x = clips.sample(cfg.batch_size, seg, gen, weighting=cfg.file_weighting).to(device)  # (B, C, seg)

        with amp:
            if frozen:  # decoder-only phase: codes from the frozen encoder and codebooks
                codes, scales = model.encode(x, return_scales=True)
                y = model.decode_with_grad(codes, x.shape[-1], scales if model.config.normalize else None)
                commit = torch.zeros((), device=device)
            else:
                y, codes, commit = gmodel(x)
        y = y.float()
        parts = rec_loss(y, x)
        if use_adv:
            for g in opt_d.param_groups:
                g["lr"] = cfg.disc_lr * lr_f
            # discriminator step
            with amp:
                real_logits, _ = disc(x)
                fake_logits, _ = disc(y.detach())
            d_loss = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            with amp:
                fake_logits, fake_feats = disc(y)
                with torch.no_grad():
                    _, real_feats = disc(x)
            parts["adv"] = generator_adv_loss(fake_logits)
            parts["feat"] = feature_matching_loss(real_feats, fake_feats)
            parts["d"] = d_loss.detach()
        weights = {"l1": cfg.l1, "mel": cfg.mel, "sisnr": cfg.sisnr, "corr": cfg.corr, "adv": cfg.adv, "feat": cfg.feat}
        opt.zero_grad(set_to_none=True)
        if balancer is not None:
            balancer.weights = {k: w for k, w in weights.items() if w > 0 and k in parts}
            balancer.backward(parts, y, commit)
            loss = sum(parts[k] * w for k, w in balancer.weights.items()) + commit
        else:
            loss = sum(parts[k] * w for k, w in weights.items() if k in parts) + commit
            loss.backward()
        if frozen and world > 1:  # the decoder-only phase bypasses DDP
            _all_reduce_grads(model.decoder.parameters())
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1

        if main:
            if budget:
                n = int(1000 * min(1.0, progress_now()))
                bar.update(n - last_bar)
                last_bar = n
            else:
                bar.update(1)
            if step % cfg.log_every == 0 or step == 1:
                rec = {"step": step, "min": round((elapsed_before + time.time() - t0) / 60, 3), "lr": cfg.lr * lr_f,
                       "loss": float(loss.detach()), "commit": float(commit.detach()),
                       **{k: float(v.detach()) for k, v in parts.items()},
                       "usage": [round(float(codes[:, i].unique().numel()) / mcfg.codebook_size, 3)
                                 for i in range(codes.shape[1])]}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(step=step, mel=f"{float(parts['mel'].detach()):.3f}", sisnr=f"{-float(parts['sisnr'].detach()):.1f}dB")
        if step % cfg.ckpt_every == 0:
            save_checkpoint()
    bar.close()
    if not frozen:
        # the encoder moved while BatchNorm's running statistics lagged behind: recompute them
        model.calibrate_latent_norm(clips.sample(cfg.batch_size, seg, gen, weighting=cfg.file_weighting) for _ in range(cfg.calibration_batches))
    save_checkpoint()
    summary = {}
    if main:
        model.eval().save_pretrained(out / "final")
        summary = {"steps": step, "minutes": round((elapsed_before + time.time() - t0) / 60, 2),
                   "files": len(clips.clips), "seconds_of_audio": round(clips.seconds, 1),
                   "skipped_unreadable": clips.skipped_unreadable, "skipped_silent": clips.skipped_silent,
                   "skipped": clips.skipped, "params": sum(p.numel() for p in model.parameters()),
                   "kbps": round(mcfg.num_levels * mcfg.kbps_per_level, 3)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.close()
        print(f"saved {out / 'final'} after {step} steps ({summary['minutes']} min)", flush=True)
    if world > 1:
        dist.barrier()
    return summary
