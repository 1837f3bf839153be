"""Train an image (VQ-GAN) or video (causal 3D VQ) tokenizer from a recipe.

    unitok tokenizer train tokenizers/image-vqgan-f8/config.yaml --data DIR --out OUT [--resume] [key=value ...]
    torchrun --nproc_per_node=2 -m unitok.cli tokenizer train ...      # DDP (gloo on CPU, nccl on GPU)

Loop: random crops (+ random downscale, flips) of a folder of images (or clips of videos), L1/L2
reconstruction + quantizer aux loss (+ optional LPIPS-style perceptual loss from local weights,
+ PatchGAN hinge loss with taming's adaptive weight after `loss.gan_start`), AdamW, warm-up then
cosine LR over the step or time budget (whichever ends first), gradient clipping, EMA of the
weights, bf16 autocast on GPU. Writes OUT/log.jsonl, OUT/samples/step*.png (originals above
reconstructions), OUT/ckpt/last.pt (resumable; loaded with weights_only=True) and, at the end,
OUT/final (save_pretrained; EMA weights when ema_decay > 0).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from unitok.config import from_dict, to_dict, _merge
from unitok.data.media import SkipLog, list_media, read_image, read_video, to_tensor, to_uint8
from unitok.errors import CheckpointError, ConfigError, DataError
from unitok.tokenizers.quantizers import Quantizer, check_dead_code_threshold

__all__ = ["TrainConfig", "DataConfig", "LossConfig", "train_from_recipe", "train", "ImageCropSampler",
           "VideoClipSampler"]


@dataclass
class DataConfig:
    crop: int = 64  # square training crops (pixels)
    batch_size: int = 16  # per process
    min_scale: float = 0.5  # random downscale in [min_scale, 1] before cropping (1 = none)
    flip: bool = True
    color_aug: float = 0.0  # probability per crop of a random channel permutation or grey conversion
    frames: int = 9  # video: frames per clip (1 + 4k for temporal compression 4)
    frame_stride: int = 2  # video: take every n-th frame
    cache_mb: int = 2048  # decoded-file cache


@dataclass
class LossConfig:
    l1: float = 1.0
    l2: float = 1.0
    perceptual: float = 0.0  # weight of the LPIPS-style loss; needs perceptual_weights
    perceptual_weights: str | None = None  # local file (never downloaded)
    gan: float = 0.0  # discriminator weight (0 = no GAN)
    gan_start: int = 2000  # step at which the GAN loss starts (warm-up)
    disc_ndf: int = 64
    disc_layers: int = 3
    disc_lr_mult: float = 1.0


@dataclass
class TrainConfig:
    modality: Literal["image", "video"] = "image"
    name: str = "tokenizer"
    preset: str = "f8-cpu"  # image_preset / video_preset name
    model: dict = field(default_factory=dict)  # overrides of the preset's fields (checked)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    steps: int = 10000
    time_budget_min: float | None = None  # stop after this many minutes (schedules follow it)
    grad_clip: float = 1.0
    # fraction of the run (steps or time budget) trained as a plain autoencoder with the quantizer
    # bypassed; k-means codebooks then initialise on the trained latents. Colour and brightness are
    # learned in a few hundred unquantised steps but slowly through a cold codebook.
    quant_warmup: float = 0.0
    ema_decay: float = 0.999  # 0 = no EMA weights
    log_every: int = 20
    sample_every: int = 500
    ckpt_every_min: float = 5.0
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; None: adaptive (1 when other work loads the CPUs)
    channels_last: bool = False
    compile: bool = False
    bf16: bool = True  # autocast on CUDA only


def build_tokenizer(cfg: TrainConfig):
    """The tokenizer a recipe describes (preset + checked overrides)."""
    if cfg.modality == "image":
        from unitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, image_preset

        base, cls, ccls = image_preset(cfg.preset), ImageTokenizer, ImageTokenizerConfig
    else:
        from unitok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig, video_preset

        base, cls, ccls = video_preset(cfg.preset), VideoTokenizer, VideoTokenizerConfig
    mcfg = from_dict(ccls, _merge(to_dict(base), cfg.model), source=f"{cfg.name}: model")
    return cls(mcfg)


# ---------------------------------------------------------------- data


class _Cache:
    def __init__(self, paths, reader, budget_mb: int, skips: SkipLog):
        self.paths, self.reader, self.skips = list(paths), reader, skips
        self.budget, self.used, self.mem, self.bad = budget_mb << 20, 0, {}, set()

    def get(self, rng: random.Random) -> np.ndarray:
        for _ in range(100 + 10 * len(self.paths)):
            i = rng.randrange(len(self.paths))
            if i in self.bad:
                continue
            if i in self.mem:
                return self.mem[i]
            try:
                arr = self.reader(self.paths[i])
            except DataError as e:
                self.bad.add(i)
                self.skips.add(self.paths[i], str(e).split(": ", 1)[-1])
                continue
            if self.used + arr.nbytes <= self.budget:
                self.mem[i], self.used = arr, self.used + arr.nbytes
            return arr
        raise DataError(f"no readable files among {len(self.paths)} ({self.skips.summary()})")


def _random_crop(x: torch.Tensor, crop: int, min_scale: float, flip: bool, rng: random.Random) -> torch.Tensor:
    """x (..., 3, H, W) float -> (..., 3, crop, crop): random downscale, crop, horizontal flip."""
    H, W = x.shape[-2:]
    smax = 1.0 if min(H, W) >= crop else crop / min(H, W)  # upscale small images
    smin = max(min_scale, crop / min(H, W)) if min_scale < 1 else smax
    s = math.exp(rng.uniform(math.log(min(smin, smax)), math.log(max(smin, smax))))
    size = min(H, W, max(crop, round(crop / s))) if s <= 1 else max(1, round(crop / s))
    y0, x0 = rng.randint(0, H - size), rng.randint(0, W - size)
    patch = x[..., y0:y0 + size, x0:x0 + size]
    if size != crop:
        lead = patch.shape[:-3]
        patch = F.interpolate(patch.reshape(-1, *patch.shape[-3:]), size=(crop, crop), mode="bilinear",
                              antialias=size > crop, align_corners=False).reshape(*lead, 3, crop, crop)
    if flip and rng.random() < 0.5:
        patch = patch.flip(-1)
    return patch


def _color(x: torch.Tensor, p: float, rng: random.Random) -> torch.Tensor:
    """With probability p: grey (1/3 of the time) or a random RGB channel permutation. x (..., 3, H, W)."""
    if p <= 0 or rng.random() >= p:
        return x
    if rng.random() < 1 / 3:
        g = (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])
        return g.expand_as(x).contiguous()
    perm = [0, 1, 2]
    rng.shuffle(perm)
    return x[..., perm, :, :]


class ImageCropSampler:
    """Endless batches (B, 3, crop, crop) in [-1, 1] of random crops of random images in a folder."""

    def __init__(self, directory, cfg: DataConfig, seed: int = 0):
        self.cfg, self.rng, self.skips = cfg, random.Random(seed), SkipLog()
        paths = list_media(directory, "image")
        if not paths:
            raise DataError(f"{directory}: no image files ({', '.join(sorted({'.png', '.jpg', '.webp'}))} ...)")
        self.cache = _Cache(paths, read_image, cfg.cache_mb, self.skips)

    def batch(self) -> torch.Tensor:
        c = self.cfg
        return torch.stack([_color(_random_crop(to_tensor(self.cache.get(self.rng)), c.crop, c.min_scale, c.flip,
                                                self.rng), c.color_aug, self.rng) for _ in range(c.batch_size)])


class VideoClipSampler:
    """Endless batches (B, 3, T, crop, crop) of random clips of random videos in a folder."""

    def __init__(self, directory, cfg: DataConfig, seed: int = 0):
        self.cfg, self.rng, self.skips = cfg, random.Random(seed), SkipLog()
        paths = list_media(directory, "video")
        if not paths:
            raise DataError(f"{directory}: no video files")
        need = cfg.frames * 40  # read a window of frames per video (cached)
        self.cache = _Cache(paths, lambda p: read_video(p, max_frames=need, stride=cfg.frame_stride),
                            cfg.cache_mb, self.skips)

    def batch(self) -> torch.Tensor:
        c, out = self.cfg, []
        for _ in range(c.batch_size):
            v = self.cache.get(self.rng)  # (T, H, W, 3)
            T = v.shape[0]
            t0 = self.rng.randint(0, max(0, T - c.frames))
            clip = v[t0:t0 + c.frames]
            if clip.shape[0] < c.frames:  # pad short videos with their last frame
                clip = np.concatenate([clip, np.repeat(clip[-1:], c.frames - clip.shape[0], 0)])
            x = to_tensor(clip)  # (T, 3, H, W)
            out.append(_random_crop(x, c.crop, c.min_scale, c.flip, self.rng).transpose(0, 1))  # (3, T, c, c)
        return torch.stack(out)


# ---------------------------------------------------------------- losses


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(rec_loss, g_loss, last_layer: torch.Tensor) -> torch.Tensor:
    """taming's balance: ||grad rec|| / ||grad gan|| at the decoder's last layer, clamped to [0, 1e4]."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Video (B, 3, T, H, W) -> frames (B*T, 3, H, W); images unchanged."""
    return x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x


# ---------------------------------------------------------------- training


def _lr_factor(step: int, progress: float, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_from_recipe(args, data: dict) -> int:
    cfg = from_dict(TrainConfig, data, source=str(args.config))
    train(cfg, args.data, args.out, resume=getattr(args, "resume", False))
    return 0


def train(cfg: TrainConfig, data_dir, out_dir, resume: bool = False) -> dict:
    """Run the loop; returns a summary dict (steps, minutes, skipped files, last metrics)."""
    import torch.distributed as dist
    from tqdm import tqdm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:
        _adapt_threads()
    torch.manual_seed(cfg.seed)  # same init on every rank
    out = Path(out_dir)
    if rank == 0:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "ckpt").mkdir(parents=True, exist_ok=True)

    model = build_tokenizer(cfg).to(device)  # after init_process_group: EMA codebooks sync across ranks
    f = model.downsample
    if cfg.data.crop % f:
        raise ConfigError(f"{cfg.name}: data.crop {cfg.data.crop} must be a multiple of the downsampling factor {f}")
    if not 0 <= cfg.quant_warmup < 1:
        raise ConfigError(f"{cfg.name}: quant_warmup must be a fraction in [0, 1), got {cfg.quant_warmup}")
    tokens = cfg.data.batch_size * (cfg.data.crop // f) ** 2
    if cfg.modality == "video":
        tokens = cfg.data.batch_size * model.latent_frames(cfg.data.frames) * (cfg.data.crop // f) ** 2
    check_dead_code_threshold(getattr(model, "qcfg", None) or model.config.quantizer, tokens * world, source=f"{cfg.name}: model.quantizer")
    sampler_cls = ImageCropSampler if cfg.modality == "image" else VideoClipSampler
    sampler = sampler_cls(data_dir, cfg.data, seed=cfg.seed * 1000 + rank)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    disc = None
    if cfg.loss.gan > 0:
        from unitok.tokenizers.image import NLayerDiscriminator

        disc = NLayerDiscriminator(3, cfg.loss.disc_ndf, cfg.loss.disc_layers).to(device)
    perc = None
    if cfg.loss.perceptual > 0:
        from unitok.training.perceptual import load_perceptual

        perc = load_perceptual(cfg.loss.perceptual_weights).to(device)  # ConfigError if not local

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = (torch.optim.AdamW(disc.parameters(), lr=cfg.lr * cfg.loss.disc_lr_mult, betas=cfg.betas)
             if disc is not None else None)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    quantizers = [q for m in (model, ema) if m is not None for q in m.modules() if isinstance(q, Quantizer)]

    step, elapsed0 = 0, 0.0
    ckpt_path = out / "ckpt" / "last.pt"
    if resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}")
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=True)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            if ema is not None and "ema" in ck:
                ema.load_state_dict(ck["ema"])
            if disc is not None and "disc" in ck:
                disc.load_state_dict(ck["disc"])
                opt_d.load_state_dict(ck["opt_d"])
            step, elapsed0 = int(ck["step"]), float(ck["elapsed"])
        except (KeyError, RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(f"{ckpt_path}: cannot resume ({str(e).splitlines()[0][:200]})") from None

    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                          broadcast_buffers=False,  # codebook buffers are synced by the quantizer itself
                          find_unused_parameters=cfg.quant_warmup > 0)  # bypassed quantizer: no grads
    fwd = torch.compile(train_model) if cfg.compile else train_model
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")

    fixed = sampler.batch()[:8].to(device)  # the batch shown in sample grids
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    t_start = time.time() - elapsed0
    last_ckpt = time.time()
    logf = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=cfg.name)
    metrics: dict = {}
    while step < cfg.steps:
        elapsed = time.time() - t_start
        if budget_s is not None and elapsed >= budget_s:
            break
        progress = max(step / cfg.steps, elapsed / budget_s if budget_s else 0.0)
        lr_f = _lr_factor(step, progress, cfg)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_f
        if not cfg.threads and device.type == "cpu" and step % 25 == 0:
            _adapt_threads()
        _set_bypass(quantizers, progress < cfg.quant_warmup)
        x = sampler.batch().to(device)
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        model.train()
        with torch.autocast(**amp):
            rec, q = fwd(x)
        rec = rec.float()
        rec_loss = cfg.loss.l1 * (rec - x).abs().mean() + cfg.loss.l2 * F.mse_loss(rec, x)
        if perc is not None:
            rec_loss = rec_loss + cfg.loss.perceptual * perc(_frames(rec), _frames(x)).mean()
        loss = rec_loss + q.loss
        gan_on = disc is not None and step >= cfg.loss.gan_start
        if gan_on:
            disc.eval()
            g_loss = -disc(_frames(rec)).mean()
            w = adaptive_weight(rec_loss, g_loss, model.last_layer()) * cfg.loss.gan
            loss = loss + w * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        opt.step()
        if gan_on:
            disc.train()
            for g in opt_d.param_groups:
                g["lr"] = cfg.lr * cfg.loss.disc_lr_mult * lr_f
            d_loss = hinge_d_loss(disc(_frames(x)), disc(_frames(rec.detach())))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        if ema is not None:
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
        step += 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{cfg.name}: loss is {loss.item()} at step {step}")
        mse = F.mse_loss(rec.detach().clamp(-1, 1), x).item()
        metrics = {"step": step, "loss": loss.item(), "rec": rec_loss.item(), "aux": q.loss.item(),
                   "psnr": 10 * math.log10(4.0 / max(mse, 1e-10)), "usage": _num(q.usage), "ppl": _num(q.perplexity),
                   "lr": cfg.lr * lr_f, "min": (time.time() - t_start) / 60}
        if gnorm is not None:
            metrics["gnorm"] = float(gnorm)
        metrics["threads"] = torch.get_num_threads()
        if gan_on:
            metrics.update(d_loss=d_loss.item(), g_loss=g_loss.item(), gan_w=float(w))
        bar.update(1)
        if rank == 0 and step % cfg.log_every == 0:
            if math.isnan(q.usage):  # quantizer warm-up
                bar.set_postfix(psnr=f"{metrics['psnr']:.2f}", phase="autoencoder warm-up")
            else:
                bar.set_postfix(psnr=f"{metrics['psnr']:.2f}", usage=f"{q.usage:.2f}", ppl=f"{q.perplexity:.0f}")
            logf.write(json.dumps(metrics) + "\n")
            logf.flush()
        if rank == 0 and cfg.sample_every and step % cfg.sample_every == 0:
            _save_samples(ema or model, fixed, out / "samples" / f"step{step:07d}.png")
        if rank == 0 and time.time() - last_ckpt > cfg.ckpt_every_min * 60:
            _save_ckpt(ckpt_path, cfg, model, opt, ema, disc, opt_d, step, time.time() - t_start)
            last_ckpt = time.time()
    bar.close()
    _set_bypass(quantizers, False)
    summary = {"steps": step, "minutes": (time.time() - t_start) / 60, "skipped_files": sampler.skips.count,
               "skipped": sampler.skips.items[:20], "last": metrics}
    if world > 1:  # EMA codebooks are buffers: check every rank holds rank 0's
        diff = torch.zeros((), device=device)
        for name, b in model.named_buffers():
            if "embed" in name:
                ref = b.detach().clone()
                dist.broadcast(ref, 0)
                diff = torch.maximum(diff, (b.detach() - ref).abs().max())
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        summary["codebook_rank_maxdiff"] = diff.item()
        summary["world_size"] = world
    if rank == 0:
        _save_ckpt(ckpt_path, cfg, model, opt, ema, disc, opt_d, step, time.time() - t_start)
        final = ema or model
        _save_samples(final, fixed, out / "samples" / "final.png")
        final.save_pretrained(out / "final")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "recipe.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        logf.close()
        print(f"{cfg.name}: {step} steps in {summary['minutes']:.1f} min; {sampler.skips.summary()}; "
              f"saved {out / 'final'}")
    if world > 1:
        dist.barrier()
    return summary


def _adapt_threads() -> int:
    """On a shared CPU machine, OpenMP threads waiting for a busy core make every op slow (measured:
    f8-cpu step 1.1 s with 1 thread vs 2-8 s with 2 threads at load 6 on 2 cores). Use all cores only
    while the 1-minute load average, minus our own threads, leaves them free."""
    n = os.cpu_count() or 1
    try:
        others = os.getloadavg()[0] - torch.get_num_threads()
    except OSError:
        return torch.get_num_threads()
    want = max(1, min(n, int(n - max(0.0, others) + 0.5)))
    if want != torch.get_num_threads():
        torch.set_num_threads(want)
    return want


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v  # JSON has no NaN (a bypassed quantizer has no usage)


def _set_bypass(quantizers, on: bool) -> None:
    for q in quantizers:
        q.bypass = on


@torch.no_grad()
def _save_samples(model, x: torch.Tensor, path: Path) -> None:
    from unitok.bench.common import save_grid

    was = model.training
    model.eval()
    rec, _ = model(x)
    model.train(was)
    a, b = to_uint8(_frames(x)), to_uint8(_frames(rec))
    n = min(len(a), 8)
    save_grid([list(a[:n]), list(b[:n])], path)


def _save_ckpt(path, cfg, model, opt, ema, disc, opt_d, step, elapsed) -> None:
    ck = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
          "config": json.dumps(to_dict(cfg))}
    if ema is not None:
        ck["ema"] = ema.state_dict()
    if disc is not None:
        ck["disc"], ck["opt_d"] = disc.state_dict(), opt_d.state_dict()
    tmp = Path(str(path) + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, path)
