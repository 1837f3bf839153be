"""Train an image (VQ-GAN) or video (causal 3D VQ) tokenizer from a recipe, on the engine.

    unitok tokenizer train tokenizers/image-vqgan-f8/config.yaml --data DIR --out OUT [--resume] [key=value ...]
    torchrun --nproc_per_node=2 -m unitok.cli tokenizer train ...      # DDP (gloo on CPU, NCCL on GPU)

Each step: random crops (+ random downscale, flips, colour) of a folder of images (or clips of
videos), L1/L2 reconstruction + quantizer aux loss (+ optional LPIPS-style perceptual loss from
local weights, + PatchGAN hinge loss with taming's adaptive weight from `loss.gan_start`), then a
discriminator step, then the EMA of the weights. The first `quant_warmup` of the run trains a
plain autoencoder (quantizer bypassed); k-means codebooks then start on its latents.

Under torchrun the model is wrapped in DDP; the discriminator's gradients and BatchNorm statistics
are averaged over ranks by hand, and EMA codebooks are synchronised by vector-quantize-pytorch.
OUT/checkpoint/ (unitok.checkpoint: model, ema, disc and optimizer states), OUT/metrics.jsonl,
OUT/samples/step*.png (originals above reconstructions), OUT/final (save_pretrained; EMA weights
when ema_weights > 0), OUT/train_summary.json.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from unitok.config import from_dict, merge, to_dict
from unitok.data.crops import CropConfig, ImageCropSampler, VideoClipSampler
from unitok.data.media import save_grid, to_uint8
from unitok.errors import ConfigError
from unitok.metrics import psnr_from_mse
from unitok.tokenizers.quantizers import Quantizer, check_dead_code_threshold
from unitok.training.loop import Engine, OptimConfig, RunConfig, Task, python_rng_state

__all__ = ["TrainConfig", "LossConfig", "VQGANTask", "train", "train_from_recipe"]


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
    data: CropConfig = field(default_factory=CropConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # fraction of the run (steps or time budget) trained as a plain autoencoder with the quantizer
    # bypassed; k-means codebooks then initialise on the trained latents. Colour and brightness are
    # learned in a few hundred unquantised steps but slowly through a cold codebook.
    quant_warmup: float = 0.0
    # codebook refit: at this fraction of the run, refit the codebook by k-means on the latents of
    # `refit_tokens` tokens of training crops, then train only the decoder on the frozen codes (every
    # code the fit gave a vector stays in use; no codebook drift). null: never. kind vq only.
    refit_at: float | None = None
    refit_tokens: int = 65536
    ema_weights: float = 0.999  # decay of the EMA of the model weights (0 = none); codebooks: model.quantizer.decay
    sample_every: int = 500
    channels_last: bool = False
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=(0.5, 0.9), warmup_steps=100,
                                                                   min_lr_ratio=0.1, grad_clip=1.0))
    # threads null: adaptive (all cores while the machine is idle, 1 while other work loads it)
    run: RunConfig = field(default_factory=lambda: RunConfig(max_steps=10000, log_every=20, ckpt_every_min=5.0))


def build_tokenizer(cfg: TrainConfig):
    """The tokenizer a recipe describes (preset + checked overrides)."""
    if cfg.modality == "image":
        from unitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, image_preset

        base, cls, ccls = image_preset(cfg.preset), ImageTokenizer, ImageTokenizerConfig
    else:
        from unitok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig, video_preset

        base, cls, ccls = video_preset(cfg.preset), VideoTokenizer, VideoTokenizerConfig
    mcfg = from_dict(ccls, merge(to_dict(base), cfg.model), source=f"{cfg.name}: model")
    return cls(mcfg)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(rec_loss, g_loss, last_layer: torch.Tensor, engine: Engine | None = None) -> torch.Tensor:
    """taming's balance: ||grad rec|| / ||grad gan|| at the decoder's last layer, clamped to [0, 1e4].
    Under DDP the gradients are the global batch's (averaged over ranks), as in one process."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if engine is not None and engine.distributed:
        g = torch.stack([g_rec, g_gan])
        engine.all_reduce_mean(g)
        g_rec, g_gan = g[0], g[1]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Video (B, 3, T, H, W) -> frames (B*T, 3, H, W); images unchanged."""
    return x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x


class VQGANTask(Task):
    kind = "tokenizer"

    def __init__(self, cfg: TrainConfig, engine: Engine, data_dir):
        self.cfg, self.engine, self.out = cfg, engine, engine.out
        dev = engine.device
        if not 0 <= cfg.quant_warmup < 1:
            raise ConfigError(f"{cfg.name}: quant_warmup must be a fraction in [0, 1), got {cfg.quant_warmup}")
        if cfg.refit_at is not None and not cfg.quant_warmup < cfg.refit_at < 1:
            raise ConfigError(f"{cfg.name}: refit_at must be a fraction in (quant_warmup, 1), got {cfg.refit_at}")
        if cfg.data.batch_size % engine.world:
            raise ConfigError(f"{cfg.name}: data.batch_size {cfg.data.batch_size} must be a multiple of the "
                              f"{engine.world} processes")
        if not engine.run.threads and dev.type == "cpu":
            _adapt_threads()
        model = build_tokenizer(cfg).to(dev)  # after init_process_group: EMA codebooks sync across ranks
        f = model.downsample
        if cfg.data.crop % f:
            raise ConfigError(f"{cfg.name}: data.crop {cfg.data.crop} must be a multiple of the downsampling factor {f}")
        tokens = cfg.data.batch_size * (cfg.data.crop // f) ** 2
        if cfg.modality == "video":
            tokens = cfg.data.batch_size * model.latent_frames(cfg.data.frames) * (cfg.data.crop // f) ** 2
        qcfg = getattr(model, "qcfg", None) or model.config.quantizer
        check_dead_code_threshold(qcfg, tokens, source=f"{cfg.name}: model.quantizer")
        if cfg.refit_at is not None and qcfg.kind != "vq":
            raise ConfigError(f"{cfg.name}: refit_at needs model.quantizer.kind 'vq', not {qcfg.kind!r}")
        self.tokens_per_batch = tokens
        self.frozen = False
        sampler_cls = ImageCropSampler if cfg.modality == "image" else VideoClipSampler
        self.sampler = sampler_cls(data_dir, cfg.data, seed=cfg.run.seed * 1000)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.disc = None
        if cfg.loss.gan > 0:
            from unitok.tokenizers.image import NLayerDiscriminator

            self.disc = NLayerDiscriminator(3, cfg.loss.disc_ndf, cfg.loss.disc_layers).to(dev)
        self.perc = None
        if cfg.loss.perceptual > 0:
            from unitok.perceptual import load_perceptual

            self.perc = load_perceptual(cfg.loss.perceptual_weights).to(dev)  # ConfigError if not local
        self.param_groups = [{"params": list(model.parameters())}]
        self.extra_optimizers = {}
        if self.disc is not None:
            self.extra_optimizers["disc"] = engine.make_optimizer(  # AdamW's default decay, as before the engine
                self.disc.parameters(), lr=cfg.optim.lr * cfg.loss.disc_lr_mult, weight_decay=0.01)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_weights > 0 else None
        self.quantizers = [q for m in (model, self.ema) if m is not None for q in m.modules() if isinstance(q, Quantizer)]
        self.model_train = engine.parallelize(model, broadcast_buffers=False,  # codebooks sync in the quantizer
                                              find_unused_parameters=cfg.quant_warmup > 0)  # bypassed: no grads
        self.fixed = self.sampler.batch()[:8].to(dev)  # the batch shown in sample grids
        if engine.main:
            (self.out / "samples").mkdir(parents=True, exist_ok=True)

    # what the checkpoint holds
    def modules(self) -> dict:
        return {"model": self.model, **({"ema": self.ema} if self.ema is not None else {}),
                **({"disc": self.disc} if self.disc is not None else {})}

    def inference_weights(self) -> str:
        return "ema" if self.ema is not None else "model"

    def model_config(self) -> dict:
        return {"type": self.model.type_name, **to_dict(self.model.config)}

    def data_state(self):
        return self.sampler.rng.getstate()

    def load_data_state(self, state) -> None:
        self.sampler.rng.setstate(python_rng_state(state))

    def extra_state(self) -> dict:
        return {"frozen": self.frozen}

    def load_extra_state(self, state: dict) -> None:
        if state.get("frozen", False):
            self._freeze()

    # phases
    def _freeze(self) -> None:
        """Decoder-only phase: encoder, quant_conv and codebook fixed (in the model and its EMA copy)."""
        self.frozen = True
        trainable = ("decoder.", "post_quant_conv.", "image.decoder.", "image.post_quant_conv.")
        for m in (self.model, self.ema):
            if m is None:
                continue
            for name, p in m.named_parameters():
                if not name.startswith(trainable):
                    p.requires_grad_(False)
        for q in self.quantizers:
            q.frozen = True
            q.train(False)

    @torch.no_grad()
    def _refit(self) -> float:
        """k-means codebook on the latents of >= refit_tokens tokens of training crops without colour
        augmentation (the codes are for natural colours, not permuted channels); rank 0's fit is
        broadcast: every rank holds the same codebook."""
        model = self.model
        q = next(m for m in model.modules() if isinstance(m, Quantizer))
        was = model.training
        model.eval()
        enc = getattr(model, "image", model)  # a per-frame video tokenizer wraps an image tokenizer
        zs, n = [], 0
        crop_cfg = self.sampler.cfg
        self.sampler.cfg = dataclasses.replace(crop_cfg, color_aug=0.0)
        try:
            while n < self.cfg.refit_tokens:
                x = self.sampler.batch().to(self.engine.device)
                z = enc.quant_conv(enc.encoder(_frames(x) if enc is not model else x)).float()  # (B, E, [T,] h, w)
                zs.append(z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1]))
                n += zs[-1].shape[0]
        finally:
            self.sampler.cfg = crop_cfg
        usage = q.refit(torch.cat(zs))
        model.train(was)
        self.engine.broadcast_buffers(model)
        return usage

    # the step
    def begin_step(self, step: int, progress: float) -> None:
        if not self.engine.run.threads and self.engine.device.type == "cpu" and step % 25 == 0:
            _adapt_threads()
        for q in self.quantizers:
            q.bypass = progress < self.cfg.quant_warmup
        if self.cfg.refit_at is not None and progress >= self.cfg.refit_at and not self.frozen:
            usage = self._refit()
            self._freeze()
            if self.engine.main:
                print(f"\nrefit the codebook on {self.cfg.refit_tokens:,} tokens of training crops (usage on the fit "
                      f"data {usage:.1%}); training the decoder only from now on", flush=True)

    def forward_backward(self, scale: float) -> dict:
        cfg, e = self.cfg, self.engine
        x = self.sampler.batch(e.world, e.rank).to(e.device)
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with e.autocast():  # the decoder-only phase bypasses DDP (sync_grads averages its gradients)
            rec, q = (self.model if self.frozen else self.model_train)(x)
        rec = rec.float()
        rec_loss = cfg.loss.l1 * (rec - x).abs().mean() + cfg.loss.l2 * F.mse_loss(rec, x)
        if self.perc is not None:
            rec_loss = rec_loss + cfg.loss.perceptual * self.perc(_frames(rec), _frames(x)).mean()
        loss = rec_loss + q.loss
        self.gan_on = self.disc is not None and e.step >= cfg.loss.gan_start
        m = {}
        if self.gan_on:
            self.disc.eval()
            g_loss = -self.disc(_frames(rec)).mean()
            w = adaptive_weight(rec_loss, g_loss, self.model.last_layer(), e) * cfg.loss.gan
            loss = loss + w * g_loss
            m.update(g_loss=g_loss.item(), gan_w=float(w))
        (loss * scale).backward()
        self.x, self.rec = x, rec.detach()
        mse = F.mse_loss(self.rec.clamp(-1, 1), x).item()
        m.update(loss=loss.item(), rec=rec_loss.item(), aux=q.loss.item(), psnr=psnr_from_mse(mse),
                 usage=_num(q.usage), ppl=_num(q.perplexity), threads=torch.get_num_threads())
        if math.isnan(q.usage):
            m["phase"] = "autoencoder warm-up"
        return m

    def sync_grads(self) -> None:
        if self.frozen:
            self.engine.all_reduce_grads(p for p in self.model.parameters() if p.requires_grad)

    def end_step(self, step: int) -> dict:
        m = {}
        if self.gan_on:
            self.disc.train()
            d_loss = hinge_d_loss(self.disc(_frames(self.x)), self.disc(_frames(self.rec)))
            opt_d = self.extra_optimizers["disc"]
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.engine.all_reduce_grads(self.disc.parameters())
            opt_d.step()
            self.engine.average_buffers(self.disc)  # BatchNorm running statistics
            m["d_loss"] = d_loss.item()
        if self.ema is not None:
            d = min(self.cfg.ema_weights, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(pm, 1 - d)
                for be, bm in zip(self.ema.buffers(), self.model.buffers()):
                    be.copy_(bm)
        if self.engine.main and self.cfg.sample_every and (step + 1) % self.cfg.sample_every == 0:
            _save_samples(self.ema or self.model, self.fixed, self.out / "samples" / f"step{step + 1:07d}.png")
        return m

    def finish(self) -> dict:
        for q in self.quantizers:
            q.bypass = False
        s = {"skipped_files": self.sampler.skips.count, "skipped": self.sampler.skips.items[:20]}
        if self.engine.distributed:  # EMA codebooks are buffers: check every rank holds rank 0's
            import torch.distributed as dist

            diff = torch.zeros((), device=self.engine.device)
            for name, b in self.model.named_buffers():
                if "embed" in name:
                    ref = b.detach().clone()
                    dist.broadcast(ref, 0)
                    diff = torch.maximum(diff, (b.detach() - ref).abs().max())
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
            s.update(codebook_rank_maxdiff=diff.item(), world_size=self.engine.world)
        return s


def train_from_recipe(args, data: dict) -> int:
    cfg = from_dict(TrainConfig, data, source=str(args.config))
    train(cfg, args.data, args.out, resume=args.resume, allow_recipe_change=args.allow_recipe_change)
    return 0


def train(cfg: TrainConfig, data_dir, out_dir, resume: bool = False, *, allow_recipe_change: bool = False,
          progress: bool = True) -> dict:
    """Run the loop; returns a summary dict (steps, minutes, skipped files, last metrics)."""
    out = Path(out_dir)
    engine = Engine(cfg.run, cfg.optim, out, recipe=to_dict(cfg), resume=resume, allow_recipe_change=allow_recipe_change,
                    progress=progress, name=cfg.name)
    task = VQGANTask(cfg, engine, data_dir)
    if engine.main:
        out.mkdir(parents=True, exist_ok=True)
    summary = engine.fit(task)
    if engine.main:
        final = task.ema or task.model
        _save_samples(final, task.fixed, out / "samples" / "final.png")
        final.save_pretrained(out / "final")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{cfg.name}: {summary['steps']} steps in {summary['minutes']:.1f} min; {task.sampler.skips.summary()}; "
              f"saved {out / 'final'}", flush=True)
    if engine.distributed:
        import torch.distributed as dist

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


@torch.no_grad()
def _save_samples(model, x: torch.Tensor, path: Path) -> None:
    was = model.training
    model.eval()
    rec, _ = model(x)
    model.train(was)
    a, b = to_uint8(_frames(x)), to_uint8(_frames(rec))
    n = min(len(a), 8)
    save_grid([list(a[:n]), list(b[:n])], path)
