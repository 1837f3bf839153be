"""Text LM benchmark: nats per character on held-out text after M minutes of training.

    unitok bench text-lm --data input.txt --minutes 10 --json results.json

Protocol (honest by construction):
* the first 90% of --data (by characters) is the training text; the tokenizer
  is trained on it alone, the model trains on it alone;
* the clock starts before tokenizer training: tokenizer training,
  tokenization, model set-up (and compilation, if enabled) and training all
  fit in --minutes; the final evaluation is not counted;
* nats/char = total token NLL of the last 10% / its number of characters,
  which makes it comparable with character-level models. The held-out text is
  tokenized as one document (`<bos>` + ids) and every token is scored once
  with a sliding context: windows of seq_len tokens advancing by seq_len / 2,
  so every token after the first window sees at least seq_len / 2 tokens of
  context;
* --eval-data, if given, is scored the same way (whole file).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from unitok.config import load_config, to_dict
from unitok.reporting import write_json

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "text-lm.yaml"


def run(args) -> int:
    from unitok.data.text import encode_doc, read_text, split_text, train_text_tokenizer
    from unitok.model.scoring import score_tokens
    from unitok.training.lm import TextLMTask, TrainConfig, text_vocab, write_history
    from unitok.training.loop import Engine

    t_start = time.perf_counter()
    cfg_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    cfg = load_config(TrainConfig, cfg_path, list(getattr(args, "overrides", []) or []) + [f"run.seed={args.seed}"])
    raw = read_text(args.data)
    extra = read_text(args.eval_data) if args.eval_data else None
    train_text, held_text = split_text(raw, 0.1)
    out = Path(args.json).with_suffix("")
    out = out.with_name(out.name + "-run")

    t0 = time.perf_counter()
    tok = train_text_tokenizer(train_text, cfg.text_vocab_size, out)
    vocab = text_vocab(tok)
    train_ids, held_ids = encode_doc(tok, vocab, train_text), encode_doc(tok, vocab, held_text)
    tok_s = time.perf_counter() - t0

    budget = args.minutes * 60 - (time.perf_counter() - t_start)
    # the budget comes from --minutes (tokenizer time taken off); no checkpoints but the last
    cfg = replace(cfg, run=replace(cfg.run, max_minutes=budget / 60, ckpt_every=0, ckpt_every_min=0.0))
    engine = Engine(cfg.run, cfg.optim, out, recipe=to_dict(cfg), name="text-lm")
    task = TextLMTask(cfg, engine, train_ids, held_ids, vocab, tok, eval_chars=len(held_text))
    print(f"tokenizer: {tok.vocab_size} pieces in {tok_s:.1f}s, {len(train_text) / (len(train_ids) - 1):.2f} chars/token "
          f"(train); model: {task.model.num_params() / 1e6:.2f}M params; budget {budget / 60:.2f} min")
    res = engine.fit(task)  # its final evaluation scores the whole held-out text (not counted in minutes)
    write_history(engine.history, out)
    minutes = (time.perf_counter() - t_start) / 60 - (res.get("eval_seconds", 0) / 60)
    nll, n = res["eval_nll"], res["eval_tokens"]

    t1 = time.perf_counter()
    eval_nll = None
    if extra is not None:
        e_nll, _ = score_tokens(task.model, encode_doc(tok, vocab, extra), cfg.seq_len, batch_size=cfg.batch_size)
        eval_nll = e_nll / len(extra)
    eval_s = time.perf_counter() - t1 + res.get("eval_seconds", 0)
    train_loss = next((r["loss"] for r in reversed(engine.history) if r.get("lr") is not None), None)
    tokens = engine.step * task.tokens_per_step

    result = {
        "nats_per_char": nll / len(held_text),
        "eval_nats_per_char": eval_nll,
        "minutes": round(minutes, 3),
        "params": task.model.num_params(),
        "held_out_token_loss": nll / n,
        "held_out_chars": len(held_text),
        "held_out_tokens": n,
        "steps": engine.step,
        "train_tokens": tokens,
        "final_train_loss": train_loss,
        "tokenizer_seconds": round(tok_s, 2),
        "train_seconds": round(engine.elapsed, 1),
        "eval_seconds": round(eval_s, 1),
        "timing": "tokenizer training + tokenization + model set-up + training counted in minutes; final eval not",
        "eval_context": f"sliding window of {cfg.seq_len} tokens, stride {max(1, cfg.seq_len // 2)}",
        "data": str(args.data),
        "eval_data": str(args.eval_data) if args.eval_data else None,
        "config": str(cfg_path) if cfg_path else "built-in defaults",
        "seed": args.seed,
        "run_dir": str(out),
    }
    write_json(result, args.json)
    rows = [("nats/char (last 10%)", f"{result['nats_per_char']:.4f}"),
            ("nats/char (--eval-data)", "-" if eval_nll is None else f"{eval_nll:.4f}"),
            ("held-out token loss", f"{result['held_out_token_loss']:.4f}"),
            ("params", f"{result['params'] / 1e6:.2f}M"), ("steps", str(engine.step)),
            ("train tokens", str(tokens)), ("minutes (tok + train)", f"{minutes:.2f}")]
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print(f"-> {args.json}")
    return 0
