"""Language-model training on a text file, on the engine (`unitok/training/loop.py`).

    unitok lm train configs/train/text-lm.yaml --data input.txt --out runs/lm
    unitok lm train configs/train/debug.yaml run.max_steps=50 --data input.txt --out runs/dbg --resume
    torchrun --nproc_per_node=2 -m unitok.cli lm train ...      # DDP; same batches as one process

What a run does: split off the evaluation text (the last `eval_fraction` of --data unless
--eval-data is given), train the SentencePiece text tokenizer on the training text only, tokenize,
then train `UnifiedTransformer` (AdamW with weight decay on matrices only; the engine's schedule,
budgets, clipping and checkpoints) with periodic held-out evaluation.

Run directory: OUT/checkpoint/ (unitok.checkpoint format: model.json, model.safetensors,
optimizer.pt, state.json, vocab.json, tokenizers/text/), OUT/metrics.jsonl, and
OUT/losses.json + OUT/losses.csv (the logged history). `--resume` continues bit for bit
(step-budgeted runs; a time budget depends on the wall clock by nature).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unitok.config import load_config, to_dict
from unitok.data.text import TextWindows, encode_doc, read_text, split_text, train_text_tokenizer
from unitok.errors import CheckpointError, VocabMismatchError
from unitok.model.config import ModelConfig, text
from unitok.model.scoring import score_tokens
from unitok.training.loop import Engine, OptimConfig, RunConfig, decode_rng_state, encode_rng_state
from unitok.training.transformer_task import TransformerTask

__all__ = ["TrainConfig", "TextLMTask", "text_vocab", "prepare", "run_cli", "train_text_lm"]


@dataclass
class TrainConfig:
    """One LM training run. The model's vocab_size comes from the vocabulary (`model.vocab_size` is unused)."""

    model: ModelConfig = field(default_factory=text)
    text_vocab_size: int = 2048  # SentencePiece pieces (256 of them are byte fallbacks)
    eval_fraction: float = 0.1  # held out from the end of --data when no --eval-data is given
    batch_size: int = 16  # sequences per optimizer micro-step, over all ranks
    seq_len: int = 128  # training context (<= model.max_seq_len)
    eval_every: int = 250  # steps; 0 = only at the end
    eval_tokens: int = 16384  # held-out tokens used by periodic evals (the final eval uses all)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=20, min_lr_ratio=0.1, grad_clip=1.0))
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=10, ckpt_every=500))

    def __post_init__(self):
        if self.seq_len > self.model.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in (0, 1)")
        if min(self.batch_size, self.seq_len) < 1:
            raise ValueError("batch_size and seq_len must be >= 1")


def text_vocab(tokenizer):
    """The unified vocabulary of a text-only model: text ids, then the special tokens.
    (One size token is the minimum the layout allows; media codebooks come later.)"""
    from unitok.vocab import UnifiedVocab

    return UnifiedVocab.from_tokenizers([tokenizer], max_size=1)


class TextLMTask(TransformerTask):
    """Next-token prediction on random windows of one long tokenized text."""

    def __init__(self, cfg: TrainConfig, engine: Engine, train_ids: np.ndarray, eval_ids: np.ndarray | None,
                 vocab, tokenizer, *, eval_chars: int | None = None, data_hash: str = ""):
        super().__init__(engine, cfg.model, vocab, batch_size=cfg.batch_size, seq_len=cfg.seq_len, optim=cfg.optim)
        self.cfg, self.tokenizer = cfg, tokenizer
        self.eval_ids, self.eval_chars, self.data_hash = eval_ids, eval_chars, data_hash
        self.windows = TextWindows(train_ids, cfg.batch_size, cfg.seq_len, cfg.run.seed + 1)
        self._t_last, self._tok_last = time.perf_counter(), 0

    # what the checkpoint holds
    def tokenizers(self) -> dict:
        return {"text": self.tokenizer}

    def extra_state(self) -> dict:
        return {"data_sha256": self.data_hash}

    def load_extra_state(self, state: dict) -> None:
        if self.data_hash and state.get("data_sha256") and state["data_sha256"] != self.data_hash:
            raise CheckpointError(f"{self.engine.resume_from}: the checkpoint was trained on different data "
                                  "(--data differs)")

    def data_state(self):
        return encode_rng_state(self.windows.gen.get_state())

    def load_data_state(self, state) -> None:
        self.windows.gen.set_state(decode_rng_state(state))

    # the step
    def forward_backward(self, scale: float) -> dict:
        x, y = self.windows.next(self.engine.world, self.engine.rank)
        x, y = x.to(self.engine.device), y.to(self.engine.device)
        with self.engine.autocast():
            loss = self.model_train(x, y)
        (loss * scale).backward()
        return {"loss": float(loss.detach())}

    def end_step(self, step: int) -> dict:
        out = {"tokens": (step + 1) * self.tokens_per_step}
        now = time.perf_counter()
        out["tok_per_s"] = round((out["tokens"] - self._tok_last) / max(now - self._t_last, 1e-9))
        if (step + 1) % self.engine.run.log_every == 0 or step == 0:
            self._t_last, self._tok_last = now, out["tokens"]
        # every rank evaluates (FSDP2 gathers parameters collectively); rank 0 logs
        if self.cfg.eval_every and (step + 1) % self.cfg.eval_every == 0 and self.eval_ids is not None:
            out["eval_loss"] = self.eval_loss(self.cfg.eval_tokens)["eval_loss"]
        return out

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

    def finish(self) -> dict:
        t0 = time.perf_counter()
        ev = self.eval_loss()
        if ev:
            ev["eval_seconds"] = time.perf_counter() - t0
            h = self.engine.history
            h.append({"step": self.engine.step, "tokens": self.engine.step * self.tokens_per_step, "lr": None,
                      "loss": h[-1]["loss"] if h else None, "eval_loss": ev["eval_loss"], "final_eval": True})
        return ev


def write_history(history: list[dict], out: Path) -> None:
    """OUT/losses.json and OUT/losses.csv: the logged history, for plots and spreadsheets."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "losses.json").write_text(json.dumps(history, indent=0) + "\n")
    keys = ["step", "tokens", "time_s", "lr", "loss", "eval_loss", "tok_per_s"]
    with open(out / "losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def prepare(cfg: TrainConfig, data: str, eval_data: str | None, out: Path, tokenizer=None,
            engine: Engine | None = None) -> dict:
    """Read and split text, train (or reuse) the tokenizer, tokenize. Returns a dict. Under torchrun
    the main rank trains the tokenizer and the others receive it, so every rank has the same one."""
    raw = read_text(data)
    if eval_data:
        train_text, eval_text = raw, read_text(eval_data)
    else:
        train_text, eval_text = split_text(raw, cfg.eval_fraction)
    if tokenizer is None:
        from unitok.tokenizers.text import TextTokenizer

        def train() -> bytes:
            return train_text_tokenizer(train_text, cfg.text_vocab_size, out).model_proto

        tokenizer = TextTokenizer(engine.from_main(train) if engine else train())
    elif tokenizer.vocab_size != cfg.text_vocab_size:
        raise VocabMismatchError(f"the checkpoint's text tokenizer has {tokenizer.vocab_size} pieces; "
                                 f"the config asks for text_vocab_size={cfg.text_vocab_size}")
    vocab = text_vocab(tokenizer)
    return dict(tokenizer=tokenizer, vocab=vocab, train_ids=encode_doc(tokenizer, vocab, train_text),
                eval_ids=encode_doc(tokenizer, vocab, eval_text), eval_chars=len(eval_text),
                data_hash=hashlib.sha256(raw.encode()).hexdigest()[:16])


def train_text_lm(cfg: TrainConfig, data, out, *, eval_data=None, resume: bool = False,
                  allow_recipe_change: bool = False, progress: bool = True) -> tuple:
    """Prepare the data, train, save. Returns (task, summary)."""
    out = Path(out)
    engine = Engine(cfg.run, cfg.optim, out, recipe=to_dict(cfg), resume=resume,
                    allow_recipe_change=allow_recipe_change, progress=progress, name="lm")
    tokenizer = None
    if engine.resume_from is not None:
        from unitok.checkpoint import TOKENIZERS
        from unitok.tokenizers.text import TextTokenizer

        tokenizer = TextTokenizer.from_pretrained(engine.resume_from / TOKENIZERS / "text")
    d = prepare(cfg, data, eval_data, out, tokenizer=tokenizer, engine=engine)
    task = TextLMTask(cfg, engine, d["train_ids"], d["eval_ids"], d["vocab"], d["tokenizer"],
                      eval_chars=d["eval_chars"], data_hash=d["data_hash"])
    if engine.main:
        print(f"model {task.model.num_params() / 1e6:.2f}M params, vocab {d['vocab'].size}, "
              f"{len(d['train_ids'])} train / {len(d['eval_ids'])} eval tokens "
              f"({d['eval_chars'] / max(1, len(d['eval_ids']) - 1):.2f} chars/token held out)", flush=True)
    summary = engine.fit(task)
    if engine.main:
        write_history(engine.history, out)
    return task, summary


def run_cli(args) -> int:
    cfg = load_config(TrainConfig, args.config, args.overrides)
    task, s = train_text_lm(cfg, args.data, args.out, eval_data=args.eval_data, resume=args.resume,
                            allow_recipe_change=getattr(args, "allow_recipe_change", False))
    if task.engine.main:
        e = task.engine
        msg = f"step {e.step}, {e.step * task.tokens_per_step} tokens in {e.elapsed / 60:.1f} min, " \
              f"train loss {e.history[-1]['loss'] if e.history else float('nan'):.4f}"
        if "eval_loss" in s:
            msg += f", eval loss {s['eval_loss']:.4f} ({s['eval_nats_per_char']:.4f} nats/char)"
        print(msg + f" -> {e.ckpt_dir}")
    return 0
