"""The training engine: one loop under every trainer (text LM, VQ-GAN / video, EnCodec, unified LM).

A trainer is a `Task`: it builds its modules and says what one micro-batch step is; the engine does
the rest, the same way for all of them:

    engine = Engine(cfg.run, cfg.optim, out, recipe=to_dict(cfg), kind="image", resume=args.resume)
    task = MyTask(cfg, engine)                    # builds model(s); engine.parallelize(model)
    engine.fit(task)                              # until run.max_steps or run.max_minutes

* device: CPU, or CUDA with bf16 autocast (`engine.autocast()`), one process or `torchrun`
  (`torch.distributed` with gloo on CPU, NCCL on GPU); `parallelize(model)` is the one place that
  wraps a model (none | ddp | fsdp2: `fully_shard` per block, sharded DCP checkpoints).
* optimizer: AdamW over the task's parameter groups; warm-up then cosine or WSD (warm-up, stable,
  decay) over progress = max(step / max_steps, elapsed / max_minutes), so a time-budgeted run
  decays to its end; gradient accumulation and clipping; extra optimizers (discriminators) follow
  the same schedule.
* a loss that is NaN or Inf skips the step (no update), is logged, and stops the run after
  `max_bad_steps` in a row.
* checkpoints (`unitok.checkpoint` format) every `ckpt_every` steps and/or `ckpt_every_min`
  minutes and at the end, with RNG and data position of every rank; resume refuses an existing
  run without `--resume` and a changed recipe unless `allow_recipe_change` is set.
* OUT/metrics.jsonl (one JSON line per logged step) and a progress bar on a terminal; plain
  periodic lines when the output is a log file.

Data parallelism is exact by construction: every rank draws the *global* batch from the same
seeded stream and keeps its own slice (`engine.shard`), so 2 ranks x batch b see the data of
1 process x batch 2b, and DDP's gradient mean equals the big batch's mean.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from unitok import checkpoint as ckpt_io
from unitok.errors import CheckpointError, ConfigError, UnitokError

__all__ = ["OptimConfig", "RunConfig", "Engine", "Task", "TrainingDiverged", "lr_factor", "recipe_diff",
           "encode_rng_state", "decode_rng_state", "python_rng_state"]


@dataclass
class OptimConfig:
    """The optimizer and its schedule; the same names in every recipe."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW); which parameters decay is the trainer's choice
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps
    min_lr_ratio: float = 0.1  # cosine / wsd end at lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: the last fraction of the run decays linearly
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimizer step

    def __post_init__(self):
        if self.lr <= 0 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, grad_accum >= 1 and warmup_steps >= 0")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError("decay_fraction must be in (0, 1]")


@dataclass
class RunConfig:
    """Budgets, cadence and machine; the same names in every recipe."""

    max_steps: int = 1_000_000
    max_minutes: float | None = None  # wall-clock budget; the schedule decays to its end
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # autocast to bf16 on CUDA (CPU runs in fp32)
    parallel: Literal["ddp", "fsdp2"] = "ddp"  # how torchrun ranks share the model (fsdp2: language models)
    compile: bool = False  # torch.compile the model (first compile costs ~15-60 s on CPU)
    log_every: int = 10  # steps between metrics lines
    ckpt_every: int = 0  # steps between checkpoints; 0 = none but the last
    ckpt_every_min: float = 0.0  # minutes between checkpoints; 0 = none but the last
    max_bad_steps: int = 5  # NaN/Inf losses in a row before the run stops

    def __post_init__(self):
        if self.max_steps < 1 or self.log_every < 1 or self.max_bad_steps < 1:
            raise ValueError("max_steps, log_every and max_bad_steps must be >= 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError("max_minutes must be positive (or null for no time budget)")


# Recipe keys that may change when a run is resumed: budgets, cadence and the machine.
RESUMABLE_KEYS = ("run.max_steps", "run.max_minutes", "run.log_every", "run.ckpt_every", "run.ckpt_every_min",
                  "run.threads", "run.max_bad_steps", "run.compile")


class TrainingDiverged(UnitokError):
    """The loss was NaN or Inf for `max_bad_steps` steps in a row."""


def lr_factor(opt: OptimConfig, step: int, progress: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based) and run progress in [0, 1]."""
    if step < opt.warmup_steps:
        return (step + 1) / opt.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    if opt.schedule == "constant":
        return 1.0
    if opt.schedule == "wsd":
        start = 1 - opt.decay_fraction
        return 1.0 if p <= start else 1 - (1 - opt.min_lr_ratio) * (p - start) / opt.decay_fraction
    return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def recipe_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (keys in RESUMABLE_KEYS ignored)."""
    if path.lstrip(".") in RESUMABLE_KEYS:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in recipe_diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [f"{path.lstrip('.')}: {a!r} -> {b!r}"]


class Task:
    """What a trainer specifies. Set `self.model` (the module whose weights the run produces) and
    `self.param_groups`; override the hooks it needs."""

    model: nn.Module
    param_groups: list[dict]
    extra_optimizers: dict[str, torch.optim.Optimizer] = {}  # e.g. {"disc": AdamW}, same schedule
    kind: str = "transformer"  # checkpoint kind of `model`

    def modules(self) -> dict[str, nn.Module]:
        """Every trained module saved in the checkpoint ("model" first); e.g. "ema", "disc"."""
        return {"model": self.model}

    def inference_weights(self) -> str:
        return "model"

    def model_config(self) -> dict:
        raise NotImplementedError

    def begin_step(self, step: int, progress: float) -> None:
        """Phase switches (warm-ups, refits) before the step's first micro-batch."""

    def forward_backward(self, scale: float) -> dict:
        """Draw one micro-batch, compute the loss, call backward on loss * scale; return metrics
        with "loss" (float, unscaled)."""
        raise NotImplementedError

    def sync_grads(self) -> None:
        """Gradient reductions DDP does not do (modules outside the wrapped model)."""

    def end_step(self, step: int) -> dict:
        """After the optimizer step (EMA, discriminator); returns metrics to log."""
        return {}

    def data_state(self) -> Any:
        """This rank's data position (JSON); restored by `load_data_state`."""
        return None

    def load_data_state(self, state: Any) -> None:
        pass

    def extra_state(self) -> dict:
        """Other JSON state of the task (phase flags ...), saved in state.json on rank 0."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def finish(self) -> dict:
        """After the last step (final evaluation, calibration); returns summary fields."""
        return {}

    def vocab(self):
        return None

    def tokenizers(self) -> dict:
        return {}


def encode_rng_state(t: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor: `torch.get_rng_state()`, `Generator.get_state()`) as JSON text."""
    return base64.b64encode(t.numpy().tobytes()).decode()


def decode_rng_state(s: str) -> torch.Tensor:
    """The inverse of `encode_rng_state`."""
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _is_tty() -> bool:
    return sys.stderr.isatty()


class Engine:
    """Owns device, process group, optimizer, schedule, budget, checkpoints and logs of one run."""

    def __init__(self, run: RunConfig, optim: OptimConfig, out, *, recipe: dict, resume: bool = False,
                 allow_recipe_change: bool = False, progress: bool = True, name: str = "train"):
        import torch.distributed as dist

        self.run, self.optim, self.out, self.recipe = run, optim, Path(out), recipe
        self.name, self.progress_enabled = name, progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        cuda = run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available())
        if run.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA device is available")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if run.threads:
            torch.set_num_threads(run.threads)
        self.ckpt_dir = self.out / ckpt_io.CKPT_DIR
        self.allow_recipe_change = allow_recipe_change
        self.resume_from = self._check_resume(resume, allow_recipe_change)
        torch.manual_seed(run.seed)  # same initial weights on every rank
        self.step, self.elapsed, self.bad_steps = 0, 0.0, 0
        self.history: list[dict] = []
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # -------------------------------------------------------------- set-up helpers for tasks
    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """FSDP2: parameters and optimizer state sharded over the ranks; DCP checkpoints."""
        return self.distributed and self.run.parallel == "fsdp2"

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def autocast(self):
        if self.device.type == "cuda" and self.run.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def parallelize(self, model: nn.Module, *, find_unused_parameters: bool = False,
                    broadcast_buffers: bool = True) -> nn.Module:
        """The one place a model is wrapped for data parallelism (and compiled)."""
        wrapped = model
        if self.distributed and self.run.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          find_unused_parameters=find_unused_parameters, broadcast_buffers=broadcast_buffers)
        elif self.sharded:
            from unitok.training.parallel import fully_shard_model

            wrapped = fully_shard_model(model, self.device)
        if self.run.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def shard(self, global_batch):
        """This rank's slice of a global batch (tensor or list) drawn identically on every rank."""
        n = len(global_batch) // self.world
        return global_batch[self.rank * n:(self.rank + 1) * n]

    def all_reduce_mean(self, t: torch.Tensor) -> None:
        """In place: the mean of `t` over ranks."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t)
            t /= self.world

    def all_reduce_grads(self, params) -> None:
        """Average gradients over ranks (for modules not wrapped in DDP, e.g. discriminators)."""
        for p in params:
            if p.grad is not None:
                self.all_reduce_mean(p.grad)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (normalisation running statistics) over ranks."""
        for b in module.buffers():
            if b.is_floating_point():
                self.all_reduce_mean(b.data)

    def from_main(self, make):
        """`make()` runs on the main rank only; every rank returns its result (a picklable value), or
        raises the UnitokError that `make()` raised there."""
        if not self.distributed:
            return make()
        import torch.distributed as dist

        box = [None]
        if self.main:
            try:
                box = [(make(), None)]
            except UnitokError as e:
                box = [(None, e)]
        dist.broadcast_object_list(box, 0)
        value, error = box[0]
        if error is not None:
            raise error
        return value

    def broadcast_buffers(self, module: nn.Module) -> None:
        if self.distributed:
            import torch.distributed as dist

            for b in module.buffers():
                dist.broadcast(b.data, 0)

    def make_optimizer(self, groups, lr: float | None = None, weight_decay: float | None = None) -> torch.optim.AdamW:
        """AdamW with the recipe's settings; `lr` / `weight_decay` override them (e.g. a discriminator's)."""
        o = self.optim
        return torch.optim.AdamW(groups, lr=o.lr if lr is None else lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay if weight_decay is None else weight_decay)

    # -------------------------------------------------------------- resume
    def _check_resume(self, resume: bool, allow_change: bool) -> Path | None:
        exists = self.ckpt_dir.exists() or any((self.out / n).exists() for n in ("ckpt", "checkpoint.pt"))
        if not resume:
            if exists:
                raise CheckpointError(f"{self.out} already holds a checkpoint; pass --resume to continue or choose "
                                      "another --out")
            return None
        if not exists:
            raise CheckpointError(f"--resume: no checkpoint in {self.out}")
        ck = ckpt_io.resolve(self.out)
        saved = ckpt_io.read_state(ck).get("recipe", {})
        diffs = recipe_diff(saved, self.recipe)
        if diffs and not allow_change:
            raise CheckpointError(f"{ck} was written by a different recipe ({'; '.join(diffs[:3])}"
                                  f"{f'; and {len(diffs) - 3} more' if len(diffs) > 3 else ''}); resume with the same "
                                  "config, or pass --allow-recipe-change to continue with the new one on purpose")
        return ck

    def restore(self, task: Task) -> None:
        ck = self.resume_from
        st = ckpt_io.read_state(ck)
        if self.sharded:
            from unitok.training.parallel import load_sharded

            if ckpt_io.read_meta(ck).get("weights") != "dcp":
                raise CheckpointError(f"{ck}: not a sharded checkpoint; resume it with run.parallel=ddp")
            load_sharded(ck, task.model, self.optimizers["model"])
            opt_states = {}
        else:
            opt_states = ckpt_io.read_optimizers(ck, self.device)
        for name, m in task.modules().items() if not self.sharded else ():
            if self.allow_recipe_change and not (ck / f"{name}.safetensors").is_file():
                if self.main:  # a module the changed recipe added (e.g. a discriminator)
                    print(f"{self.name}: {name} is not in {ck}; it starts afresh", flush=True)
                continue
            ckpt_io.load_into(m, ckpt_io.read_weights(ck, name, self.device), ck)
        try:
            for name, o in self.optimizers.items() if not self.sharded else ():
                if name in opt_states or not self.allow_recipe_change:
                    o.load_state_dict(opt_states[name])
            ranks = st["ranks"]
            if len(ranks) != self.world:
                raise CheckpointError(f"{ck}: saved by {len(ranks)} ranks, resumed with {self.world}; data positions "
                                      "are per rank, so resume with the same number of processes")
            mine = ranks[self.rank]
            torch.set_rng_state(decode_rng_state(mine["torch"]))
            random.setstate(python_rng_state(mine["python"]))
            np.random.set_state(_np_state(mine["numpy"]))
            if self.device.type == "cuda" and mine.get("cuda"):
                torch.cuda.set_rng_state(decode_rng_state(mine["cuda"]), self.device)
            task.load_data_state(mine["data"])
            task.load_extra_state(st.get("task", {}))
            self.step, self.elapsed = int(st["step"]), float(st["elapsed_s"])
            self.history = list(st.get("history", []))
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise CheckpointError(f"{ck}: corrupt training state ({type(e).__name__}: {e})") from None

    # -------------------------------------------------------------- checkpoints
    def _rank_state(self, task: Task) -> dict:
        s = {"torch": encode_rng_state(torch.get_rng_state()), "python": random.getstate(),
             "numpy": _np_json(np.random.get_state()), "data": task.data_state()}
        if self.device.type == "cuda":
            s["cuda"] = encode_rng_state(torch.cuda.get_rng_state(self.device).cpu())
        return s

    def save(self, task: Task) -> Path | None:
        ranks = [self._rank_state(task)]
        if self.distributed:
            import torch.distributed as dist

            ranks = [None] * self.world
            dist.all_gather_object(ranks, self._rank_state(task))
        modules, optims = task.modules(), self.optimizers
        if self.sharded:  # every rank writes its shards (with the optimizer's) into the new directory
            from unitok.training.parallel import save_sharded

            tmp = ckpt_io.tmp_dir(self.ckpt_dir)
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.barrier()
            save_sharded(tmp, task.model, self.optimizers["model"])
            self.barrier()
            modules, optims = {}, None
        path = None
        if self.main:
            state = {"step": self.step, "elapsed_s": self.elapsed, "world_size": self.world, "recipe": self.recipe,
                     "ranks": ranks, "task": task.extra_state(), "history": self.history}
            path = ckpt_io.save_checkpoint(self.ckpt_dir, kind=task.kind, config=task.model_config(),
                                           modules=modules, state=state, optimizers=optims,
                                           weights=task.inference_weights(), vocab=task.vocab(),
                                           tokenizers=task.tokenizers(), sharded=self.sharded)
        if self.sharded:
            self.barrier()  # nobody starts the next save before the rename
        return path

    # -------------------------------------------------------------- the loop
    def progress(self) -> float:
        """Run progress in [0, 1+]: max(step / max_steps, elapsed / budget)."""
        p = self.step / self.run.max_steps
        if self.run.max_minutes:
            p = max(p, self.elapsed / (self.run.max_minutes * 60))
        return p

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision for everyone (clocks differ between ranks)."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def _mean(self, x: float) -> float:
        """The mean over ranks (the global batch's loss; NaN on any rank makes it NaN everywhere)."""
        if not self.distributed:
            return x
        import torch.distributed as dist

        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def fit(self, task: Task) -> dict:
        """Train until max_steps or the time budget, then the task's finish() and a last checkpoint."""
        run, opt_cfg = self.run, self.optim
        if self.sharded and (set(task.modules()) != {"model"} or task.extra_optimizers):
            raise ConfigError("run.parallel=fsdp2 shards language models only; tokenizer trainers (EMA, "
                              "discriminator) use run.parallel=ddp")
        self.optimizers = {"model": self.make_optimizer(task.param_groups), **task.extra_optimizers}
        for o in self.optimizers.values():
            for g in o.param_groups:
                g.setdefault("base_lr", g["lr"])
        if self.resume_from is not None:
            self.restore(task)
            if self.main:
                print(f"{self.name}: resumed from {self.resume_from} at step {self.step}", flush=True)
        clip_params = list(task.model.parameters())  # model order: the norm's summation order is fixed
        bar = Progress(self, enabled=self.progress_enabled and self.main)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        log = open(self.out / "metrics.jsonl", "a") if self.main else None
        t0, elapsed0 = time.time(), self.elapsed
        last_ckpt = time.time()
        metrics: dict = {}
        while True:
            self.elapsed = elapsed0 + time.time() - t0
            progress = self.progress()
            if self._agree(self.step >= run.max_steps or progress >= 1.0):
                break
            step = self.step
            lr_f = lr_factor(opt_cfg, step, progress)
            for o in self.optimizers.values():
                for g in o.param_groups:
                    g["lr"] = g["base_lr"] * lr_f
            task.begin_step(step, progress)
            for o in self.optimizers.values():
                o.zero_grad(set_to_none=True)
            losses, metrics = [], {}
            for micro in range(opt_cfg.grad_accum):
                wrapped = getattr(task, "model_train", task.model)
                sync = micro == opt_cfg.grad_accum - 1 or not hasattr(wrapped, "no_sync")
                with contextlib.nullcontext() if sync else wrapped.no_sync():
                    metrics = task.forward_backward(1.0 / opt_cfg.grad_accum)
                losses.append(metrics["loss"])
            loss = self._mean(losses[0] if len(losses) == 1 else sum(losses) / len(losses))  # over ranks
            if not math.isfinite(loss):
                self._bad_step(step, loss)
                continue
            self.bad_steps = 0
            task.sync_grads()
            gnorm = None
            if opt_cfg.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(clip_params, opt_cfg.grad_clip)
                gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)  # DTensor (FSDP2)
            self.optimizers["model"].step()
            metrics.update(task.end_step(step))
            self.step += 1
            self.elapsed = elapsed0 + time.time() - t0
            rec = {"step": self.step, "loss": loss, "lr": self.optimizers["model"].param_groups[0]["lr"],
                   "time_s": round(self.elapsed, 3), **{k: v for k, v in metrics.items() if k != "loss"}}
            if gnorm is not None:
                rec["gnorm"] = gnorm
            if self.step % run.log_every == 0 or self.step == 1 or "eval_loss" in metrics:
                self.history.append(rec)
                if log:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            bar.update(rec)
            due = (run.ckpt_every and self.step % run.ckpt_every == 0) or \
                (run.ckpt_every_min and time.time() - last_ckpt > run.ckpt_every_min * 60)
            if self._agree(bool(due)):
                self.save(task)
                last_ckpt = time.time()
                if os.environ.get("UNITOK_KILL_AFTER_CHECKPOINT") == str(self.step):  # tests: kill -9 here
                    os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        summary = {"steps": self.step, "minutes": round(self.elapsed / 60, 3), "last": metrics}
        summary.update(task.finish())
        self.save(task)
        if log:
            log.close()
        return summary

    def _bad_step(self, step: int, loss: float) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=True)
        self.bad_steps += 1
        rec = {"step": step, "skipped": True, "loss": str(loss), "bad_steps_in_a_row": self.bad_steps}
        self.history.append(rec)
        if self.main:
            print(f"{self.name}: step {step}: loss is {loss}; step skipped ({self.bad_steps} in a row)",
                  file=sys.stderr, flush=True)
        if self.bad_steps >= self.run.max_bad_steps:
            raise TrainingDiverged(f"the loss was NaN/Inf for {self.bad_steps} steps in a row (last at step {step}); "
                                   f"lower optim.lr or check the data (the last checkpoint is in {self.ckpt_dir})")


class Progress:
    """tqdm on a terminal; otherwise a plain line every 30 s (logs stay small). Counts steps, or
    minutes of the time budget when that ends the run first."""

    def __init__(self, engine: Engine, enabled: bool, every_s: float = 30.0):
        self.e, self.enabled, self.every_s = engine, enabled, every_s
        self.timed = engine.run.max_minutes is not None
        self.bar, self.t_last = None, time.time()
        if enabled and _is_tty():
            from tqdm import tqdm

            total = engine.run.max_minutes * 60 if self.timed else engine.run.max_steps
            self.bar = tqdm(total=round(total), initial=round(engine.elapsed) if self.timed else engine.step,
                            unit="s" if self.timed else "step", desc=engine.name, dynamic_ncols=True, leave=False)

    def _post(self, rec: dict) -> dict:
        keys = ("loss", "eval_loss", "psnr", "usage", "mel", "tok_per_s", "phase")
        return {k: (f"{rec[k]:.4g}" if isinstance(rec[k], float) else rec[k]) for k in keys if k in rec}

    def update(self, rec: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update((round(self.e.elapsed) if self.timed else self.e.step) - self.bar.n)
            if self.e.step % self.e.run.log_every == 0:
                self.bar.set_postfix(self._post(rec), refresh=False)
        elif time.time() - self.t_last >= self.every_s:
            self.t_last = time.time()
            pct = 100 * min(1.0, self.e.progress())
            post = " ".join(f"{k}={v}" for k, v in self._post(rec).items())
            print(f"{self.e.name}: step {self.e.step} ({pct:.0f}%, {self.e.elapsed / 60:.1f} min) {post}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def python_rng_state(x):
    """`random.getstate()` after a JSON round trip (nested lists) as the tuples `setstate` takes."""
    return tuple(python_rng_state(v) for v in x) if isinstance(x, list) else x


def _np_json(st) -> list:
    return [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]


def _np_state(s) -> tuple:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])
