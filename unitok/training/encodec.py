"""Train an EnCodec audio tokenizer from a recipe (`unitok tokenizer train`, `modality: audio`), on the engine.

    unitok tokenizer train tokenizers/audio-encodec-16k/config.yaml --data DIR --out OUT [--resume]

Each step draws random segments from the folder (resampled to the model rate), reconstructs them
through the RVQ, and minimises L1 + multi-scale mel + negative SI-SNR + 1 - correlation +
commitment (+ MS-STFT discriminator hinge and feature matching once `loss.disc_start` of the run
has passed), optionally through EnCodec's loss balancer. At `refit_at` of the run the latent
BatchNorm statistics are fixed, every codebook is refit by residual k-means and only the decoder
trains from then on. Phases follow the engine's progress = max(step / max_steps, elapsed / budget).

Under torchrun the model is wrapped in DDP; the discriminator's gradients (and the decoder's in the
decoder-only phase, which bypasses DDP) are averaged over ranks by hand; refits and calibrations
draw the same global batches on every rank. OUT/checkpoint/, OUT/metrics.jsonl, OUT/final/
(save_pretrained), OUT/summary.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from unitok.config import from_dict, to_dict
from unitok.errors import ConfigError
from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from unitok.tokenizers.quantizers import QuantizerConfig, check_dead_code_threshold
from unitok.training.loop import Engine, OptimConfig, RunConfig, Task, decode_rng_state, encode_rng_state

__all__ = ["EncodecRecipe", "AudioDataConfig", "AudioLossConfig", "EncodecTask", "train", "train_from_recipe"]


@dataclass
class AudioDataConfig:
    batch_size: int = 8  # per optimizer step, over all ranks
    segment_s: float = 1.0
    file_weighting: Literal["length", "file"] = "length"  # draw files by duration or equally often


@dataclass
class AudioLossConfig:
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


@dataclass
class EncodecRecipe:
    modality: str = "audio"
    name: str = "audio-encodec"
    model: AudioTokenizerConfig = field(default_factory=AudioTokenizerConfig)
    data: AudioDataConfig = field(default_factory=AudioDataConfig)
    loss: AudioLossConfig = field(default_factory=AudioLossConfig)
    # codebook refit: at this fraction of the run, fix the latent BatchNorm statistics, refit every
    # RVQ codebook by residual k-means on `refit_batches` batches of latents, then train only the
    # decoder on the frozen codes (high codebook usage; no codebook drift). null: never.
    refit_at: float | None = 0.8
    refit_batches: int = 48
    calibration_batches: int = 32  # batches for the final latent BatchNorm statistics
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, betas=(0.5, 0.9), warmup_steps=50,
                                                                   min_lr_ratio=0.1, grad_clip=1.0))
    run: RunConfig = field(default_factory=lambda: RunConfig(max_steps=100000, log_every=25, ckpt_every=200))


class EncodecTask(Task):
    kind = "tokenizer"

    def __init__(self, recipe: EncodecRecipe, engine: Engine, data_dir):
        from unitok.data.audio import AudioClips
        from unitok.training.audio_losses import LossBalancer, MultiScaleSTFTDiscriminator, ReconstructionLoss

        self.recipe, self.engine = recipe, engine
        lc, mcfg, dev = recipe.loss, recipe.model, engine.device
        if recipe.data.batch_size % engine.world:
            raise ConfigError(f"{recipe.name}: data.batch_size {recipe.data.batch_size} must be a multiple of the "
                              f"{engine.world} processes")
        if lc.balancer and recipe.optim.grad_accum > 1:
            raise ConfigError(f"{recipe.name}: loss.balancer does its own backward; use optim.grad_accum=1")
        frames = int(recipe.data.segment_s * mcfg.sample_rate) // mcfg.hop_length
        check_dead_code_threshold(QuantizerConfig(kind="rvq", levels=mcfg.levels, codebook_size=mcfg.codebook_size,
                                                  dead_code_threshold=mcfg.dead_code_threshold),
                                  recipe.data.batch_size * frames, source=f"{recipe.name}: model")
        self.gen = torch.Generator().manual_seed(recipe.run.seed * 1000)
        self.clips = AudioClips(data_dir, mcfg.sample_rate, mcfg.channels, progress=engine.progress_enabled and engine.main)
        if engine.main:
            c = self.clips
            print(f"data: {len(c.clips)} files, {c.seconds:.1f} s; skipped {c.skipped_unreadable} unreadable, "
                  f"{c.skipped_silent} silent" + "".join(f"\n  skipped {k}: {v}" for k, v in c.skipped.items()), flush=True)
        self.model = AudioTokenizer(mcfg).to(dev).train()
        self.rec_loss = ReconstructionLoss(mcfg.sample_rate, lc.mel_n_ffts, lc.mel_bands).to(dev)
        self.disc = MultiScaleSTFTDiscriminator(mcfg.channels, lc.disc_n_ffts, lc.disc_filters).to(dev) if lc.disc else None
        self.weights = {"l1": lc.l1, "mel": lc.mel, "sisnr": lc.sisnr, "corr": lc.corr, "adv": lc.adv, "feat": lc.feat}
        self.balancer = LossBalancer(dict(self.weights)) if lc.balancer else None
        self.param_groups = [{"params": list(self.model.parameters())}]
        self.extra_optimizers = {} if self.disc is None else {
            "disc": engine.make_optimizer(self.disc.parameters(), lr=lc.disc_lr)}
        self.model_train = engine.parallelize(self.model)
        self.seg = int(recipe.data.segment_s * mcfg.sample_rate)
        self.frozen = False

    def batch(self, full: bool = False) -> torch.Tensor:
        """The global batch (identical on every rank), or this rank's slice of it."""
        d = self.recipe.data
        x = self.clips.sample(d.batch_size, self.seg, self.gen, weighting=d.file_weighting)
        return x if full else self.engine.shard(x)

    # what the checkpoint holds
    def modules(self) -> dict:
        return {"model": self.model, **({"disc": self.disc} if self.disc is not None else {})}

    def model_config(self) -> dict:
        return {"type": self.model.type_name, **to_dict(self.model.config)}

    def data_state(self):
        return encode_rng_state(self.gen.get_state())

    def load_data_state(self, state) -> None:
        self.gen.set_state(decode_rng_state(state))

    def extra_state(self) -> dict:
        return {"frozen": self.frozen}

    def load_extra_state(self, state: dict) -> None:
        self.frozen = bool(state.get("frozen", False))
        if self.frozen:
            self._set_frozen()

    # phases
    def _set_frozen(self) -> None:
        m = self.model
        for p in m.encoder.parameters():
            p.requires_grad_(False)
        m.encoder.eval()
        if m.latent_norm is not None:
            m.latent_norm.eval()

    def begin_step(self, step: int, progress: float) -> None:
        r = self.recipe
        self.use_adv = self.disc is not None and progress >= r.loss.disc_start
        if r.refit_at is not None and progress >= r.refit_at and not self.frozen:
            # calibrate the latent norm, refit the codebooks by k-means, freeze encoder and codebooks
            self.model.calibrate_latent_norm(self.batch(full=True) for _ in range(r.calibration_batches))
            usage = self.model.refit_codebooks(self.batch(full=True) for _ in range(r.refit_batches))
            self.engine.broadcast_buffers(self.model)  # every rank uses rank 0's statistics and codebooks
            self._set_frozen()
            self.frozen = True
            if self.engine.main:
                print(f"\nrefit codebooks (usage on the fit data per level: {', '.join(f'{u:.0%}' for u in usage)}); "
                      f"training the decoder only from now on", flush=True)

    def forward_backward(self, scale: float) -> dict:
        from unitok.training.audio_losses import discriminator_loss, feature_matching_loss, generator_adv_loss

        e, model = self.engine, self.model
        x = self.batch().to(e.device)  # (B, C, seg)
        with e.autocast():
            if self.frozen:  # decoder-only phase: codes from the frozen encoder and codebooks
                codes, scales = model.encode(x, return_scales=True)
                y = model.decode_latents(model.dequantize(codes), x.shape[-1], scales if model.config.normalize else None)
                commit = torch.zeros((), device=e.device)
            else:
                y, codes, commit = self.model_train(x)
        y = y.float()
        parts = self.rec_loss(y, x)
        if self.use_adv:  # discriminator step first, then the generator's adversarial terms
            with e.autocast():
                real_logits, _ = self.disc(x)
                fake_logits, _ = self.disc(y.detach())
            d_loss = discriminator_loss(real_logits, fake_logits)
            opt_d = self.extra_optimizers["disc"]
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            e.all_reduce_grads(self.disc.parameters())
            opt_d.step()
            with e.autocast():
                fake_logits, fake_feats = self.disc(y)
                with torch.no_grad():
                    _, real_feats = self.disc(x)
            parts["adv"] = generator_adv_loss(fake_logits)
            parts["feat"] = feature_matching_loss(real_feats, fake_feats)
            parts["d"] = d_loss.detach()
        if self.balancer is not None:
            self.balancer.weights = {k: w for k, w in self.weights.items() if w > 0 and k in parts}
            self.balancer.backward(parts, y, commit)
            loss = sum(parts[k] * w for k, w in self.balancer.weights.items()) + commit
        else:
            loss = sum(parts[k] * w for k, w in self.weights.items() if k in parts) + commit
            (loss * scale).backward()
        m = {"loss": float(loss.detach()), "commit": float(commit.detach()),
             **{k: float(v.detach()) for k, v in parts.items()}}
        if (e.step + 1) % e.run.log_every == 0 or e.step == 0:
            size = self.recipe.model.codebook_size
            m["usage"] = [round(float(codes[:, i].unique().numel()) / size, 3) for i in range(codes.shape[1])]
        return m

    def sync_grads(self) -> None:
        if self.frozen:  # the decoder-only phase bypasses DDP
            self.engine.all_reduce_grads(self.model.decoder.parameters())

    def finish(self) -> dict:
        r = self.recipe
        if not self.frozen:
            # the encoder moved while BatchNorm's running statistics lagged behind: recompute them
            self.model.calibrate_latent_norm(self.batch(full=True) for _ in range(r.calibration_batches))
        c = self.clips
        return {"files": len(c.clips), "seconds_of_audio": round(c.seconds, 1),
                "skipped_unreadable": c.skipped_unreadable, "skipped_silent": c.skipped_silent, "skipped": c.skipped,
                "params": sum(p.numel() for p in self.model.parameters()),
                "kbps": round(r.model.levels * r.model.kbps_per_level, 3)}


def train_from_recipe(args, data: dict) -> int:
    recipe = from_dict(EncodecRecipe, data, source=str(args.config))
    if recipe.modality != "audio":
        raise ConfigError(f"{args.config}: modality must be 'audio' for the EnCodec trainer")
    train(recipe, args.data, args.out, resume=args.resume, allow_recipe_change=args.allow_recipe_change)
    return 0


def train(recipe: EncodecRecipe, data_dir: str | Path, out_dir: str | Path, resume: bool = False, *,
          allow_recipe_change: bool = False, progress_bar: bool = True) -> dict:
    """Train and save OUT/final. Returns the summary dict (also written to OUT/summary.json)."""
    out = Path(out_dir)
    engine = Engine(recipe.run, recipe.optim, out, recipe=to_dict(recipe), resume=resume,
                    allow_recipe_change=allow_recipe_change, progress=progress_bar, name=recipe.name)
    if engine.main:
        out.mkdir(parents=True, exist_ok=True)
    task = EncodecTask(recipe, engine, data_dir)
    summary = engine.fit(task)
    if engine.main:
        task.model.eval().save_pretrained(out / "final")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"saved {out / 'final'} after {summary['steps']} steps ({summary['minutes']} min)", flush=True)
    if engine.distributed:
        import torch.distributed as dist

        dist.barrier()
    return summary
