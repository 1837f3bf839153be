"""Single-process language-model training on text (the first end-to-end path).

    unitok lm train configs/train/text-lm.yaml --data input.txt --out runs/lm
    unitok lm train configs/train/debug.yaml max_steps=50 --data input.txt --out runs/dbg --resume

What a run does: split off the evaluation text (the last `eval_fraction` of
--data unless --eval-data is given), train the SentencePiece text tokenizer on
the training text only, tokenize, then train `UnifiedTransformer` with AdamW,
linear warm-up + cosine decay (to the end of `max_steps` or of the time budget
`max_minutes`, whichever comes first), gradient clipping and periodic eval.

Run directory::

    OUT/checkpoint/      latest checkpoint (replaced atomically)
        model.safetensors   weights
        optimizer.pt        AdamW state (torch.save; loaded with weights_only=True)
        state.json          step, configs, RNG states, data position, loss history
        vocab.json          UnifiedVocab manifest (text tokenizer identity + hash)
        tokenizer/          the SentencePiece model, so a checkpoint is self-contained
    OUT/losses.json, OUT/losses.csv   loss history (train loss, lr, eval loss, tokens/s)

Resuming (`--resume`) restores weights, optimizer, RNGs and the batch sampler,
so the continued run matches an uninterrupted one bit for bit (step-based
schedules; a time budget depends on wall-clock time by nature).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from unitok.config import from_dict, load_config, to_dict
from unitok.errors import CheckpointError, ConfigError, DataError, VocabMismatchError, require_file
from unitok.model.config import ModelConfig, text
from unitok.model.transformer import UnifiedTransformer

__all__ = ["TrainConfig", "Trainer", "load_checkpoint", "save_checkpoint", "score_tokens", "text_vocab",
           "read_text", "split_text", "run_cli"]

CKPT = "checkpoint"
STATE = "state.json"
WEIGHTS = "model.safetensors"
OPTIM = "optimizer.pt"
VOCAB = "vocab.json"
TOKENIZER = "tokenizer"


@dataclass
class TrainConfig:
    """One LM training run. `model.vocab_size` is filled in from the vocabulary."""

    model: ModelConfig = field(default_factory=text)
    text_vocab_size: int = 2048  # SentencePiece pieces (256 of them are byte fallbacks)
    eval_fraction: float = 0.1  # held out from the end of --data when no --eval-data is given
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 128  # training context (<= model.max_seq_len)
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    max_steps: int = 1_000_000
    max_minutes: Optional[float] = None  # time budget; the schedule then decays to its end
    weight_decay: float = 0.1  # on matrices only (not norms or embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250  # steps; 0 = only at the end
    eval_tokens: int = 16384  # held-out tokens used by periodic evals (the final eval uses all)
    ckpt_every: int = 500  # steps; 0 = only at the end
    log_every: int = 10
    compile: bool = False  # torch.compile the model (first compile costs ~15-60 s on CPU)
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)

    def __post_init__(self):
        if self.seq_len > self.model.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in (0, 1)")
        if min(self.batch_size, self.grad_accum, self.seq_len, self.max_steps) < 1:
            raise ValueError("batch_size, grad_accum, seq_len and max_steps must be >= 1")


# ------------------------------------------------------------------ data
def read_text(path) -> str:
    p = require_file(path, "text file")
    try:
        t = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not t.strip():
        raise DataError(f"{p}: empty text file")
    return t


def split_text(t: str, eval_fraction: float) -> tuple[str, str]:
    """First (1 - f) of the characters for training, the rest held out."""
    n = int(len(t) * (1 - eval_fraction))
    return t[:n], t[n:]


def text_vocab(tokenizer):
    """The unified vocabulary of a text-only model: text ids, then the special tokens.
    (One size token is the minimum the layout allows; media codebooks come later.)"""
    from unitok.vocab import UnifiedVocab

    return UnifiedVocab(tokenizer.vocab_size, (), max_size=1, text_tokenizer=tokenizer.identity())


def train_tokenizer(train_text: str, vocab_size: int, workdir: Path):
    """Train SentencePiece on the training text only (never the held-out text)."""
    from unitok.tokenizers.text import TextTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    f = workdir / "tokenizer-train.txt"
    f.write_text(train_text, encoding="utf-8")
    try:
        return TextTokenizer.train([f], vocab_size=vocab_size)
    finally:
        f.unlink(missing_ok=True)


def encode_doc(tokenizer, vocab, t: str) -> np.ndarray:
    """<bos> + text ids, as int64. The text is one document."""
    return np.asarray([vocab.bos] + tokenizer.encode(t), dtype=np.int64)


class BatchSampler:
    """Random windows of seq_len + 1 tokens; its generator state is the data position."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        if len(ids) < seq_len + 2:
            raise DataError(f"training text has {len(ids)} tokens; need at least seq_len + 2 = {seq_len + 2}")
        self.ids = torch.from_numpy(ids)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (self.batch_size,), generator=self.gen)
        idx = starts[:, None] + torch.arange(self.seq_len + 1)  # (B, T+1)
        chunk = self.ids[idx]
        return chunk[:, :-1], chunk[:, 1:]  # inputs, targets: (B, T)


@torch.no_grad()
def score_tokens(model: UnifiedTransformer, ids: np.ndarray, window: int, stride: int | None = None,
                 batch_size: int = 16, max_tokens: int | None = None) -> tuple[float, int]:
    """Total NLL (nats) of ids[1:] given the tokens before them, with a sliding context.

    Windows of `window` tokens advance by `stride` (default window // 2); each
    window scores only targets no earlier window scored, so every target is
    counted once with between window - stride and window tokens of context
    (the first window's targets with less). Returns (total nats, targets scored).
    """
    stride = stride or max(1, window // 2)
    ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    N = len(ids)
    if N < 2:
        return 0.0, 0
    inputs, targets = [], []
    done = 0  # targets ids[1..done] are scored
    s = 0
    while done < N - 1:
        s = min(s, max(0, N - 1 - window))
        e = min(s + window, N - 1)  # inputs ids[s:e], targets ids[s+1:e+1]
        x = torch.zeros(window, dtype=torch.long)
        y = torch.full((window,), -100, dtype=torch.long)
        x[: e - s] = ids[s:e]
        tgt = ids[s + 1:e + 1].clone()
        tgt[: max(0, done - s)] = -100  # already scored by an earlier window
        y[: e - s] = tgt
        inputs.append(x)
        targets.append(y)
        done = e
        s += stride
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(inputs), batch_size):
        x, y = torch.stack(inputs[i:i + batch_size]), torch.stack(targets[i:i + batch_size])
        total += float(model(x, y, reduction="sum", z_loss=0.0))
        count += int((y != -100).sum())
    model.train(was_training)
    assert count == N - 1, (count, N)
    return total, count


# ------------------------------------------------------------------ checkpoints
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def save_checkpoint(directory, model, optimizer, state: dict, vocab, tokenizer) -> Path:
    """Write a complete checkpoint to `directory` atomically (tmp dir, then rename)."""
    from safetensors.torch import save_file

    d = Path(directory)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIM)
    vocab.save(tmp / VOCAB)
    tokenizer.save_pretrained(tmp / TOKENIZER)
    (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    old = d.with_name(d.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if d.exists():
        d.rename(old)
    tmp.rename(d)
    shutil.rmtree(old, ignore_errors=True)
    return d


def resolve_checkpoint(path) -> Path:
    p = Path(path)
    if (p / CKPT / STATE).exists() or ((p / CKPT).is_dir() and not (p / STATE).exists()):
        p = p / CKPT
    if not p.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    for name in (STATE, WEIGHTS, VOCAB):
        if not (p / name).is_file():
            raise CheckpointError(f"{p}: incomplete checkpoint, {name} is missing")
    return p


def load_checkpoint(path, *, vocab=None, optimizer: bool = False, map_location="cpu"):
    """Load a checkpoint (run dir or checkpoint dir).

    Returns dict(model, tokenizer, vocab, state, config, path[, optimizer_state]).
    `vocab`: the vocabulary the caller expects; a different manifest raises
    VocabMismatchError. Missing or corrupt files raise CheckpointError.
    Kernel backends are a property of the machine, not of the weights: unless the
    optimizer is loaded too (a resumed run keeps its config), "triton" becomes
    "auto", so a model trained with the fused kernels on a GPU samples on a CPU
    with the torch ops instead of Triton's interpreter.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from unitok.tokenizers.text import TextTokenizer
    from unitok.vocab import UnifiedVocab

    p = resolve_checkpoint(path)
    try:
        state = json.loads((p / STATE).read_text())
        cfg = from_dict(TrainConfig, state["config"], source=str(p / STATE))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p / STATE}: corrupt checkpoint state ({type(e).__name__}: {e})") from None
    except ConfigError as e:
        raise CheckpointError(f"corrupt checkpoint config: {e}") from None
    saved_vocab = UnifiedVocab.load(p / VOCAB)
    tokenizer = TextTokenizer.from_pretrained(p / TOKENIZER)
    # The tokenizer stored with the weights must be the one the manifest names.
    text_vocab(tokenizer).check_same(saved_vocab, what=f"tokenizer in {p / TOKENIZER}")
    if vocab is not None:
        vocab.check_same(saved_vocab, what=f"checkpoint {p}")
    if cfg.model.vocab_size != saved_vocab.size:
        raise VocabMismatchError(f"{p}: model vocab_size {cfg.model.vocab_size} != manifest size {saved_vocab.size}")
    try:
        weights = load_file(str(p / WEIGHTS), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{p / WEIGHTS}: corrupt weights ({str(e).splitlines()[0]})") from None
    model_cfg = cfg.model
    if not optimizer:
        model_cfg = dataclasses.replace(model_cfg, **{k: "auto" for k in ("attention", "norm_backend", "ce_backend")
                                                      if getattr(model_cfg, k) == "triton"})
    model = UnifiedTransformer(model_cfg)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{p / WEIGHTS}: weights do not fit the model config ({str(e).splitlines()[0][:200]})") from None
    out = dict(model=model, tokenizer=tokenizer, vocab=saved_vocab, state=state, config=cfg, path=p)
    if optimizer:
        if not (p / OPTIM).is_file():
            raise CheckpointError(f"{p}: incomplete checkpoint, {OPTIM} is missing")
        try:
            out["optimizer_state"] = torch.load(p / OPTIM, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises many types for truncated/garbled files
            raise CheckpointError(f"{p / OPTIM}: corrupt optimizer state ({type(e).__name__})") from None
    return out


# ------------------------------------------------------------------ training
def make_optimizer(model: UnifiedTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on linear weights only (not norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "tok_emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=False)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr to lr * min_lr_ratio as `progress` goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class Trainer:
    """Owns model, optimizer, sampler and history; `fit()` runs until max_steps or the time budget."""

    def __init__(self, cfg: TrainConfig, train_ids: np.ndarray, eval_ids: np.ndarray | None, vocab, tokenizer,
                 out: str | Path, *, eval_chars: int | None = None, time_budget_s: float | None = None,
                 progress: bool = True, data_hash: str = ""):
        self.cfg, self.vocab, self.tokenizer = cfg, vocab, tokenizer
        self.out = Path(out)
        self.train_ids, self.eval_ids, self.eval_chars = train_ids, eval_ids, eval_chars
        self.progress = progress
        self.data_hash = data_hash
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = UnifiedTransformer(cfg.model)
        self.opt = make_optimizer(self.model, cfg)
        self.sampler = BatchSampler(train_ids, cfg.batch_size, cfg.seq_len, cfg.seed + 1)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0  # seconds spent in fit(), summed over resumes
        budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        self.budget = min(x for x in (budget, time_budget_s, math.inf) if x is not None)
        self.history: list[dict] = []
        self.fwd = torch.compile(self.model) if cfg.compile else self.model

    # -------------------------------------------------------------- state
    def state(self) -> dict:
        return {
            "format": "unitok-lm-checkpoint/1",
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed,
            "config": to_dict(self.cfg),
            "params": self.model.num_params(),
            "data_sha256": self.data_hash,
            "rng": {"torch": _b64(torch.get_rng_state()), "sampler": _b64(self.sampler.gen.get_state())},
            "history": self.history,
        }

    def save(self) -> Path:
        p = save_checkpoint(self.out / CKPT, self.model, self.opt, self.state(), self.vocab, self.tokenizer)
        self.write_history()
        return p

    def resume(self, ckpt: dict) -> None:
        st = ckpt["state"]
        if dataclasses.asdict(ckpt["config"].model) != dataclasses.asdict(self.cfg.model):
            raise CheckpointError(f"{ckpt['path']}: the checkpoint's model config differs from the run config's")
        if self.data_hash and st.get("data_sha256") and st["data_sha256"] != self.data_hash:
            raise CheckpointError(f"{ckpt['path']}: the checkpoint was trained on different data (--data differs)")
        self.model.load_state_dict(ckpt["model"].state_dict())
        try:
            self.opt.load_state_dict(ckpt["optimizer_state"])
            torch.set_rng_state(_unb64(st["rng"]["torch"]))
            self.sampler.gen.set_state(_unb64(st["rng"]["sampler"]))
            self.step, self.tokens, self.elapsed = int(st["step"]), int(st["tokens"]), float(st["elapsed_s"])
            self.history = list(st.get("history", []))
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{ckpt['path']}: corrupt training state ({type(e).__name__}: {e})") from None

    def write_history(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "losses.json").write_text(json.dumps(self.history, indent=0) + "\n")
        keys = ["step", "tokens", "time_s", "lr", "loss", "eval_loss", "tok_per_s"]
        with open(self.out / "losses.csv", "w", newline="") as f:
            w = csv.DictWriter(f, keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)

    # -------------------------------------------------------------- eval
    def eval_loss(self, max_tokens: int | None = None) -> dict:
        """Mean token NLL on the held-out ids (and nats/char when the whole text is scored)."""
        if self.eval_ids is None or len(self.eval_ids) < 2:
            return {}
        nll, n = score_tokens(self.model, self.eval_ids, self.cfg.seq_len, batch_size=self.cfg.batch_size,
                              max_tokens=max_tokens)
        out = {"eval_loss": nll / n, "eval_tokens": n}
        if max_tokens is None or max_tokens >= len(self.eval_ids) - 1:
            out["eval_nll"] = nll
            if self.eval_chars:
                out["eval_nats_per_char"] = nll / self.eval_chars
        return out

    # -------------------------------------------------------------- loop
    def _progress(self) -> float:
        p = self.step / self.cfg.max_steps
        if math.isfinite(self.budget):
            p = max(p, self.elapsed / self.budget)
        return p

    def fit(self, until: int | None = None) -> dict:
        """Train until max_steps, the time budget, or step `until` (for interrupting in tests)."""
        from tqdm import tqdm

        cfg = self.cfg
        self.model.train()
        timed = math.isfinite(self.budget)
        bar = tqdm(total=round(self.budget) if timed else cfg.max_steps, initial=round(self.elapsed) if timed else self.step,
                   unit="s" if timed else "step", disable=not self.progress, dynamic_ncols=True, leave=False)
        t_last, tok_last = time.perf_counter(), self.tokens
        running = None
        last = cfg.max_steps if until is None else min(until, cfg.max_steps)
        while self.step < last and self.elapsed < self.budget:
            t0 = time.perf_counter()
            lr = lr_at(cfg, self.step, self._progress())
            for g in self.opt.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                x, y = self.sampler.next()
                loss = self.fwd(x, y) / cfg.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if not math.isfinite(loss_sum):
                raise DataError(f"training diverged at step {self.step} (loss {loss_sum}); lower lr")
            self.step += 1
            self.tokens += cfg.batch_size * cfg.seq_len * cfg.grad_accum
            running = loss_sum if running is None else 0.9 * running + 0.1 * loss_sum
            rec = None
            if self.step % cfg.log_every == 0 or self.step == 1:
                now = time.perf_counter()
                tps = (self.tokens - tok_last) / max(now - t_last, 1e-9)
                t_last, tok_last = now, self.tokens
                rec = {"step": self.step, "tokens": self.tokens, "time_s": round(self.elapsed + now - t0, 2),
                       "lr": lr, "loss": loss_sum, "tok_per_s": round(tps)}
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_ids is not None:
                ev = self.eval_loss(cfg.eval_tokens)
                rec = rec or {"step": self.step, "tokens": self.tokens, "time_s": round(self.elapsed, 2), "lr": lr,
                              "loss": loss_sum}
                rec["eval_loss"] = ev["eval_loss"]
            if rec:
                self.history.append(rec)
                post = {"loss": f"{running:.3f}", "tok/s": rec.get("tok_per_s", "")}
                if "eval_loss" in rec:
                    post["eval"] = f"{rec['eval_loss']:.3f}"
                bar.set_postfix(post, refresh=False)
            dt = time.perf_counter() - t0
            self.elapsed += dt
            bar.update(round(self.elapsed) - bar.n if timed else 1)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save()
        bar.close()
        return {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed, "train_loss": running}


# ------------------------------------------------------------------ CLI
def prepare(cfg: TrainConfig, data: str, eval_data: str | None, out: Path, tokenizer=None):
    """Read and split text, train (or reuse) the tokenizer, tokenize. Returns a dict."""
    raw = read_text(data)
    if eval_data:
        train_text, eval_text = raw, read_text(eval_data)
    else:
        train_text, eval_text = split_text(raw, cfg.eval_fraction)
    if tokenizer is None:
        tokenizer = train_tokenizer(train_text, cfg.text_vocab_size, out)
    elif tokenizer.vocab_size != cfg.text_vocab_size:
        raise VocabMismatchError(f"the checkpoint's text tokenizer has {tokenizer.vocab_size} pieces; "
                                 f"the config asks for text_vocab_size={cfg.text_vocab_size}")
    vocab = text_vocab(tokenizer)
    cfg.model.vocab_size = vocab.size
    return dict(tokenizer=tokenizer, vocab=vocab, train_ids=encode_doc(tokenizer, vocab, train_text),
                eval_ids=encode_doc(tokenizer, vocab, eval_text), eval_chars=len(eval_text),
                data_hash=hashlib.sha256(raw.encode()).hexdigest()[:16])


def run_cli(args) -> int:
    cfg = load_config(TrainConfig, args.config, args.overrides)
    out = Path(args.out)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(out, optimizer=True)
    elif (out / CKPT).exists():
        raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue or choose another --out")
    d = prepare(cfg, args.data, args.eval_data, out, tokenizer=ckpt["tokenizer"] if ckpt else None)
    if ckpt:
        d["vocab"].check_same(ckpt["vocab"], what=f"checkpoint {ckpt['path']}")
    t = Trainer(cfg, d["train_ids"], d["eval_ids"], d["vocab"], d["tokenizer"], out, eval_chars=d["eval_chars"],
                data_hash=d["data_hash"])
    if ckpt:
        t.resume(ckpt)
        print(f"resumed from {ckpt['path']} at step {t.step}")
    print(f"model {t.model.num_params() / 1e6:.2f}M params, vocab {d['vocab'].size}, "
          f"{len(d['train_ids'])} train / {len(d['eval_ids'])} eval tokens "
          f"({d['eval_chars'] and d['eval_chars'] / max(1, len(d['eval_ids']) - 1):.2f} chars/token held out)")
    res = t.fit()
    ev = t.eval_loss()
    if ev:
        t.history.append({"step": t.step, "tokens": t.tokens, "time_s": round(t.elapsed, 2), "lr": None,
                          "loss": res["train_loss"], "eval_loss": ev["eval_loss"]})
    p = t.save()
    msg = f"step {t.step}, {t.tokens} tokens in {t.elapsed / 60:.1f} min, train loss {res['train_loss']:.4f}"
    if ev:
        msg += f", eval loss {ev['eval_loss']:.4f} ({ev['eval_nats_per_char']:.4f} nats/char)"
    print(msg + f" -> {p}")
    return 0
