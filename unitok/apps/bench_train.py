"""`unitok bench train`: the engine's training throughput next to a bare PyTorch loop, in one run.

    unitok bench train configs/train/unified-cpu.yaml --steps 30 --repeats 3 --json out/train.json [--data SHARDS]

Both loops train the same model (same config, same initial weights, on the engine's device) on the
same packed batches with the same loss (`UnifiedTask._losses`: modality weights, and bf16 autocast on
a GPU when run.bf16 asks for it), AdamW over the same parameter groups (weight decay on linear
weights only) and gradient clipping; the bare loop is the textbook one (zero_grad, forward, backward,
clip, step), so what differs is the engine's loop: schedule, logging, loss and grad-norm checks.
Both draw their batches inside the timed steps and read the clock at the same point of a step (after
the optimizer step, synchronised on a GPU); each run's first step (warm-up) and the engine's
evaluation and checkpoint time are excluded. Which loop runs first alternates between repeats
(engine first, then bare first, ...) so that neither always gets a warm or a cold machine; the
engine/bare ratio is reported per repeat and as min, median and max. Without --data the batches come
from synthetic documents (random text ids and image spans of the config's sizes). Also reports the
share of engine step time spent waiting for data, peak memory, and model FLOP/s (MFU on a known GPU).
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["run", "synthetic_shards", "model_flops_per_token"]

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s per GPU


def synthetic_shards(n_docs: int = 256, seed: int = 0):
    """In-memory shards: 8,000 text ids + an 8,192-code image codebook; documents of text and one
    16x16 image span, 300-900 tokens each."""
    from unitok.data.shards import Shards
    from unitok.vocab import CodebookSpec, UnifiedVocab

    vocab = UnifiedVocab(8000, [CodebookSpec("image", 8192)], max_size=64)
    rng = np.random.default_rng(seed)
    ids, mods, offsets = [], [], [0]
    for _ in range(n_docs):
        doc = vocab.pack([{"text": rng.integers(0, 8000, rng.integers(30, 600))},
                          {"image": rng.integers(0, 8192, (16, 16))}])
        ids.append(doc.ids)
        mods.append(doc.modality)
        offsets.append(offsets[-1] + len(doc.ids))
    return Shards(Path("<synthetic>"), np.concatenate(ids), np.concatenate(mods), np.array(offsets), vocab, {})


def model_flops_per_token(model, seq_len: int) -> float:
    """6 x non-embedding parameters (forward + backward) + causal attention (6 L d T, half of 12 L d T)."""
    c = model.cfg
    return 6 * model.num_params(embeddings=False) + 6 * c.n_layer * c.dim * seq_len


def _setup(cfg, shards, steps: int, out: Path):
    """The engine and the task of one run: both loops get the same model (the engine seeds it), the
    same batches, the same loss function and the same parameter groups from here."""
    from unitok.training.loop import Engine
    from unitok.training.unified import UnifiedTask

    cfg = replace(cfg, eval_every=0, eval_fraction=0.0, run=replace(cfg.run, max_steps=steps, ckpt_every=0,
                                                                    ckpt_every_min=0.0, max_minutes=None, log_every=1))
    engine = Engine(cfg.run, cfg.optim, out, recipe={}, progress=False, name="bench")
    return engine, UnifiedTask(cfg, engine, shards)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _engine_run(cfg, shards, steps: int, out: Path) -> dict:
    engine, task = _setup(cfg, shards, steps, out)
    task.finish = lambda: {}  # no final evaluation in the timing run
    wait, clock = [0.0], {}
    nxt, end_step = task.data.next, task.end_step

    def timed_next(*a):
        t = time.perf_counter()
        b = nxt(*a)
        wait[0] += time.perf_counter() - t if engine.step >= 1 else 0.0
        return b

    def timed_end_step(step):  # after the optimizer step: the bare loop reads its clock at the same point
        if step in (0, steps - 1):
            _sync(engine.device)
            clock[step] = time.perf_counter()
        return end_step(step)

    task.data.next, task.end_step = timed_next, timed_end_step
    engine.fit(task)
    dt = clock[steps - 1] - clock[0]  # steps 2..N: the first step (allocations, warm-up) is excluded
    return {"seconds": dt, "data_wait_s": wait[0], "model": task.model, "loss1": engine.history[0]["loss"]}


def _bare_run(cfg, shards, steps: int, out: Path) -> dict:
    """The same model, batches and loss in the textbook loop (zero_grad, forward, backward, clip, step)
    with a plain AdamW over the engine's parameter groups; the batch is drawn inside the timed steps as
    in the engine. Seconds for steps 2..N."""
    engine, task = _setup(cfg, shards, steps, out)
    o = cfg.optim
    opt = torch.optim.AdamW(task.param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    t0, loss1 = 0.0, None
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, _ = task._losses(task.data.next(), task.model)  # the engine's loss: device, autocast, weights
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), o.grad_clip)
        opt.step()
        if i == 0:
            _sync(engine.device)
            t0, loss1 = time.perf_counter(), float(loss.detach())
    _sync(engine.device)
    return {"seconds": time.perf_counter() - t0, "loss1": loss1}


def _spread(xs) -> dict:
    return {"min": float(np.min(xs)), "median": float(np.median(xs)), "max": float(np.max(xs))}


def run(args) -> int:
    from unitok.reporting import markdown_table, write_json
    from unitok.config import load_config
    from unitok.errors import ConfigError
    from unitok.data.shards import read_shards
    from unitok.training.unified import UnifiedConfig

    if args.steps < 2 or args.repeats < 1:
        raise ConfigError("bench train: --steps must be >= 2 (the first step is not timed) and --repeats >= 1")
    cfg0 = load_config(UnifiedConfig, args.config, list(args.overrides or []))
    shards = read_shards(args.data) if args.data else synthetic_shards()
    tokens = (args.steps - 1) * cfg0.batch_size * cfg0.seq_len
    eng, bare, wait, loss1 = [], [], [], {}
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ("engine", "bare") if r % 2 == 0 else ("bare", "engine")  # neither always runs first
            for loop in order:
                if loop == "engine":
                    res = _engine_run(cfg0, shards, args.steps, Path(tmp) / f"e{r}")
                    eng.append(tokens / res["seconds"])
                    wait.append(res["data_wait_s"] / res["seconds"])
                    model = res["model"]
                else:
                    res = _bare_run(cfg0, shards, args.steps, Path(tmp) / f"b{r}")
                    bare.append(tokens / res["seconds"])
                loss1.setdefault(loop, res["loss1"])
            print(f"repeat {r + 1}/{args.repeats} ({order[0]} first): engine {eng[-1]:.0f} tokens/s, "
                  f"bare loop {bare[-1]:.0f} tokens/s", flush=True)
    fpt = model_flops_per_token(model, cfg0.seq_len)
    e, b = float(np.median(eng)), float(np.median(bare))
    ratios = [x / y for x, y in zip(eng, bare)]  # per repeat: the two runs of a repeat ran back to back
    dev = next(model.parameters()).device
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out = {
        "config": str(args.config), "overrides": list(args.overrides or []), "data": args.data or "synthetic",
        "steps": args.steps, "repeats": args.repeats, "device": device, "threads": torch.get_num_threads(),
        "autocast_bf16": dev.type == "cuda" and cfg0.run.bf16,
        "params": model.num_params(), "tokens_per_step": cfg0.batch_size * cfg0.seq_len,
        "engine_tokens_per_s": e, "bare_tokens_per_s": b, "engine_vs_bare": e / b,
        "engine_vs_bare_spread": _spread(ratios), "engine_vs_bare_runs": ratios,
        "engine_runs": eng, "bare_runs": bare, "step1_loss": loss1, "data_wait_share": float(np.median(wait)),
        "flops_per_token": fpt, "achieved_flops_per_s": fpt * e,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "timing": "steps 2..N of each run, batches drawn inside the timed steps in both loops, clock read after "
                  "the optimizer step (synchronised on a GPU); engine evaluation and checkpoints excluded; "
                  "the first loop alternates between repeats",
    }
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    if peak:
        out["mfu"] = fpt * e / peak
    if torch.cuda.is_available():
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out, args.json)
    rows = [{"per run": "engine tokens/s", **_spread(eng)}, {"per run": "bare loop tokens/s", **_spread(bare)},
            {"per run": "engine / bare", **_spread(ratios)}]
    print(markdown_table(rows, ["per run", "min", "median", "max"]), end="")
    print(f"over {args.repeats} repeats on {device}; data wait {out['data_wait_share']:.1%}; "
          f"{fpt * e / 1e9:.2f} GFLOP/s" + (f"; MFU {out['mfu']:.1%}" if peak else "") + f" -> {args.json}")
    return 0
