"""`unitok bench train`: the engine's training throughput next to a bare PyTorch loop, in one run.

    unitok bench train configs/train/unified-cpu.yaml --steps 30 --repeats 3 --json out/train.json [--data SHARDS]

Both loops train the same model (same config, same initial weights) on the same packed batches with
AdamW and gradient clipping; the bare loop is the textbook one (zero_grad, forward with the plain
mean loss, backward, clip, step). Runs alternate (engine, bare, engine, bare, ...) so that a noisy
machine hurts both alike; each run's first step (warm-up) and the engine's evaluation and checkpoint
time are excluded. Without --data the batches come from synthetic documents (random text ids and
image spans of the config's sizes). Reports tokens/s, the share of engine step time spent waiting
for data, peak memory, and model FLOP/s (MFU on a known GPU).
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


def _engine_run(cfg, shards, steps: int, tmp: Path) -> dict:
    from unitok.training.loop import Engine
    from unitok.training.unified import UnifiedTask

    cfg = replace(cfg, eval_every=0, eval_fraction=0.0, run=replace(cfg.run, max_steps=steps, ckpt_every=0,
                                                                    ckpt_every_min=0.0, max_minutes=None, log_every=1))
    engine = Engine(cfg.run, cfg.optim, tmp, recipe={}, progress=False, name="bench")
    task = UnifiedTask(cfg, engine, shards)
    task.finish = lambda: {}  # no final evaluation in the timing run
    wait = [0.0]
    nxt = task.data.next

    def timed_next(*a):
        t = time.perf_counter()
        b = nxt(*a)
        wait[0] += time.perf_counter() - t if engine.step >= 1 else 0.0
        return b

    task.data.next = timed_next
    engine.fit(task)
    t = {r["step"]: r["time_s"] for r in engine.history}
    dt = t[steps] - t[1]  # steps 2..N: the first step (allocations, warm-up) is excluded
    return {"seconds": dt, "data_wait_s": wait[0], "model": task.model}


def _bare_run(cfg, shards, steps: int) -> float:
    """The same model and batches in the textbook loop; seconds for steps 2..N."""
    from unitok.data.packed import PackedBatches
    from unitok.model.transformer import UnifiedTransformer

    torch.manual_seed(cfg.run.seed)
    model = UnifiedTransformer(replace(cfg.model, vocab_size=shards.vocab.size))
    data = PackedBatches(shards, cfg.seq_len, cfg.batch_size, cfg.run.seed, 0.0, cfg.cond_dropout)
    batches = [data.next() for _ in range(steps)]
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    t0 = 0.0
    for i, b in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(b.ids, b.targets, doc_ids=b.doc_ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
    return time.perf_counter() - t0


def run(args) -> int:
    from unitok.reporting import write_json
    from unitok.config import load_config
    from unitok.data.shards import read_shards
    from unitok.training.unified import UnifiedConfig

    cfg0 = load_config(UnifiedConfig, args.config, list(args.overrides or []))
    shards = read_shards(args.data) if args.data else synthetic_shards()
    tokens = (args.steps - 1) * cfg0.batch_size * cfg0.seq_len
    eng, bare, wait = [], [], []
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            res = _engine_run(cfg0, shards, args.steps, Path(tmp) / f"e{r}")
            eng.append(tokens / res["seconds"])
            wait.append(res["data_wait_s"] / res["seconds"])
            model = res["model"]
            bare.append(tokens / _bare_run(cfg0, shards, args.steps))
            print(f"repeat {r + 1}/{args.repeats}: engine {eng[-1]:.0f} tokens/s, bare loop {bare[-1]:.0f} tokens/s")
    fpt = model_flops_per_token(model, cfg0.seq_len)
    e, b = float(np.median(eng)), float(np.median(bare))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = {
        "config": str(args.config), "overrides": list(args.overrides or []), "data": args.data or "synthetic",
        "steps": args.steps, "repeats": args.repeats, "device": device, "threads": torch.get_num_threads(),
        "params": model.num_params(), "tokens_per_step": cfg0.batch_size * cfg0.seq_len,
        "engine_tokens_per_s": e, "bare_tokens_per_s": b, "engine_vs_bare": e / b,
        "engine_runs": eng, "bare_runs": bare, "data_wait_share": float(np.median(wait)),
        "flops_per_token": fpt, "achieved_flops_per_s": fpt * e,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "timing": "steps 2..N of each run; engine evaluation and checkpoints excluded; runs alternate",
    }
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    if peak:
        out["mfu"] = fpt * e / peak
    if torch.cuda.is_available():
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out, args.json)
    print(f"engine {e:.0f} vs bare {b:.0f} tokens/s ({e / b:.3f}x); data wait {out['data_wait_share']:.1%}; "
          f"{fpt * e / 1e9:.2f} GFLOP/s" + (f"; MFU {out['mfu']:.1%}" if peak else "") + f" -> {args.json}")
    return 0
