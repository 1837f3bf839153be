"""`unitok demo`: the end-to-end text path on data that ships with Python.

The English prose of the pydoc topics (`pydoc_data.topics`, ~0.8 MB in the
standard library) is split 90/10; a SentencePiece tokenizer is trained on the
90%, then a small transformer for --minutes; DIR/report.md gets the loss curve
(DIR/loss.png), a generated sample and the key figures.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from unitok.config import to_dict


def demo_config(minutes: float, seed: int):
    """The default text run (configs/train/text-lm.yaml's values) with a time budget."""
    from unitok.training.lm import TrainConfig
    from unitok.training.loop import RunConfig

    # At most 600 steps (~3.7 passes over the 0.75 MB of training text): on a quiet 2-core machine 4
    # minutes fit ~1,370 steps, which overfit (held-out 1.41 nats/char, the same before and after the
    # training engine; 1.15 at ~520 steps; docs/LOG.md).
    return TrainConfig(eval_every=100, eval_tokens=8192,
                       run=RunConfig(max_steps=600, max_minutes=minutes, ckpt_every=0, log_every=5, seed=seed))


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["tokens"], r["loss"]) for r in history if r.get("loss") is not None and r.get("lr") is not None]
    ev = [(r["tokens"], r["eval_loss"]) for r in history if r.get("eval_loss") is not None and not r.get("final_eval")]
    # The final score covers the whole held-out text (sliding windows); periodic evals use its first
    # `eval_tokens` tokens, so the two are different measurements and are drawn apart.
    fin = [(r["tokens"], r["eval_loss"]) for r in history if r.get("final_eval")]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if tr:
        ax.plot(*zip(*tr), lw=1, label="train (batch)")
    if ev:
        ax.plot(*zip(*ev), "o-", ms=4, label="held-out (periodic, first tokens)")
    if fin:
        ax.plot(*zip(*fin), "*", ms=10, label="held-out (final, all tokens)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    from pydoc_data.topics import topics

    from unitok.data.text import encode_doc, split_text, train_text_tokenizer
    from unitok.generation.sample import generate
    from unitok.training.lm import TextLMTask, text_vocab, write_history
    from unitok.training.loop import Engine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    raw = "\n\n".join(topics[k] for k in sorted(topics))
    train_text, held_text = split_text(raw, 0.1)
    cfg = demo_config(args.minutes, args.seed)
    tok = train_text_tokenizer(train_text, cfg.text_vocab_size, out)
    vocab = text_vocab(tok)
    cfg.model.vocab_size = vocab.size
    train_ids, held_ids = encode_doc(tok, vocab, train_text), encode_doc(tok, vocab, held_text)
    cfg.run.max_minutes = args.minutes - (time.perf_counter() - t_start) / 60
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the demo starts afresh each time
    engine = Engine(cfg.run, cfg.optim, out, recipe=to_dict(cfg), name="demo")
    t = TextLMTask(cfg, engine, train_ids, held_ids, vocab, tok, eval_chars=len(held_text))
    print(f"demo: {len(raw) / 1e6:.2f}M chars of pydoc topics, {tok.vocab_size}-piece BPE, "
          f"{t.model.num_params() / 1e6:.2f}M-param model, {args.minutes:g} min")
    res = engine.fit(t)  # ends with the held-out score of the whole text (res["eval_nll"])
    write_history(engine.history, out)
    nll, n = res["eval_nll"], res["eval_tokens"]
    train_loss = next((r["loss"] for r in reversed(engine.history) if r.get("lr") is not None), float("nan"))
    tokens = engine.step * t.tokens_per_step
    plot_losses(engine.history, out / "loss.png")
    prompt = "The for statement"
    ids = generate(t.model, [vocab.bos] + tok.encode(prompt), 120, temperature=0.8, top_p=0.95, seed=args.seed,
                   allowed=(0, vocab.text_size))
    sample = prompt + tok.decode(ids)
    figures = {
        "params": t.model.num_params(), "steps": engine.step, "train_tokens": tokens,
        "train_minutes": round(engine.elapsed / 60, 2), "final_train_loss": train_loss,
        "held_out_loss": nll / n, "held_out_nats_per_char": nll / len(held_text),
        "chars_per_token": len(held_text) / n,
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    fence = "```"
    report = f"""# unitok demo: text LM on the pydoc topics

Data: the English prose of Python's `pydoc_data.topics` ({len(raw):,} characters), first 90% for training
(tokenizer and model), last 10% held out. Tokenizer: SentencePiece BPE, {tok.vocab_size} pieces
({figures['chars_per_token']:.2f} characters per token on the held-out text).

| figure | value |
| --- | --- |
| parameters | {figures['params']:,} |
| steps | {engine.step} (batch {cfg.batch_size} x {cfg.seq_len} tokens) |
| training tokens | {tokens:,} |
| training time | {figures['train_minutes']} min (budget {args.minutes:g} min, tokenizer included) |
| final train loss (last logged batch) | {train_loss:.3f} nats/token |
| held-out loss | {figures['held_out_loss']:.3f} nats/token |
| held-out nats/char | {figures['held_out_nats_per_char']:.3f} |

![loss curve](loss.png)

Sample (prompt `{prompt}`, temperature 0.8, top-p 0.95, seed {args.seed}):

{fence}text
{sample}
{fence}

Model config: `{json.dumps(to_dict(cfg.model))}`

Reproduce: `unitok demo --out {args.out} --minutes {args.minutes:g} --seed {args.seed}`.
"""
    (out / "report.md").write_text(report)
    print(f"held-out {figures['held_out_nats_per_char']:.3f} nats/char; report -> {out / 'report.md'}")
    return 0
