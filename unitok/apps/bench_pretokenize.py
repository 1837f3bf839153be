"""`unitok bench pretokenize`: pretokenization throughput next to the tokenizers' own batched encode on
the same machine and the same data.

    unitok bench pretokenize ../shared/data/images docs.jsonl --tokenizer T1 T2 ... --workers 2 --json out/pre.json

1. `pretokenize` of the inputs into a temporary folder with --workers processes (end to end:
   reading, decoding, resampling and resizing, encoding, packing, writing): wall seconds, documents/s
   and tokens/s.
2. The reference: the same documents' model inputs (after the same policy, prepared once and not
   timed) encoded by each tokenizer in batches of --batch-size inputs of equal shape with every CPU
   thread (--threads), text strings one call each; seconds and code tokens/s per modality.

`speed_ratio` = reference encode seconds / pretokenize seconds: 1.0 means pretokenization runs as fast
as the tokenizers alone can encode that data (batched, all threads); below 1, the share of its
time that encoding would need. Prints a table, writes everything to --json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

__all__ = ["run"]


def _batches(xs: list, batch: int):
    """Equal-shape groups of at most `batch` inputs (each input has a leading batch dim of 1)."""
    import torch

    by: dict = {}
    for x in xs:
        by.setdefault(tuple(x.shape), []).append(x)
    for group in by.values():
        for i in range(0, len(group), batch):
            yield torch.cat(group[i:i + batch])


def run(args) -> int:
    import torch

    from unitok.reporting import markdown_table, write_json
    from unitok.config import from_dict, parse_overrides
    from unitok.data.pretokenize import PretokenizeConfig, Tokenizing, iter_documents, pretokenize
    from unitok.errors import ConfigError, DataError

    cfg = from_dict(PretokenizeConfig, parse_overrides(args.set or []), source="--set")
    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        stats = pretokenize(args.data, args.tokenizer, Path(tmp) / "shards", cfg, workers=args.workers, progress=False)
        pre_s = time.perf_counter() - t
    print(f"pretokenize: {stats['documents']} documents, {stats['tokens']:,} tokens in {pre_s:.1f} s "
          f"({args.workers} workers)", flush=True)

    tk = Tokenizing(list(map(str, args.tokenizer)), cfg)
    torch.set_num_threads(threads)  # Tokenizing keeps one thread per worker process; the reference uses all
    inputs: dict[str, list] = {m: [] for m in tk.toks}
    texts: list[str] = []
    for _, segs in iter_documents(list(map(str, args.data)), cfg, []):
        for kind, value in segs:
            if kind == "text":
                texts.append(value)
            elif kind in tk.toks:
                try:
                    inputs[kind].extend(tk.inputs(kind, value))
                except (DataError, ValueError, RuntimeError, OSError):
                    pass  # skipped by pretokenize as well
    rows = []
    for kind, xs in inputs.items():
        tok = tk.toks[kind]
        n_tokens, seconds, items = 0, 0.0, 0
        if kind == "text":
            for s in texts[:1]:
                tok.encode(s)  # warm-up
            t = time.perf_counter()
            n_tokens = sum(len(tok.encode(s)) for s in texts)
            seconds, items = time.perf_counter() - t, len(texts)
        elif xs:
            with torch.no_grad():
                tok.encode(xs[0])  # warm-up
                for b in _batches(xs, args.batch_size):
                    t = time.perf_counter()
                    codes = tok.encode(b)
                    seconds += time.perf_counter() - t
                    n_tokens += codes.numel()
            items = len(xs)
        if items:
            rows.append({"modality": kind, "inputs": items, "tokens": n_tokens, "seconds": seconds,
                         "tokens_per_s": n_tokens / max(seconds, 1e-9)})
    enc_s = sum(r["seconds"] for r in rows)
    enc_tokens = sum(r["tokens"] for r in rows)
    out = {
        "inputs": [str(d) for d in args.data], "policy": stats["policy"], "threads": threads,
        "pretokenize": {"seconds": pre_s, "documents": stats["documents"], "tokens": stats["tokens"],
                        "tokens_per_s": stats["tokens"] / pre_s, "documents_per_s": stats["documents"] / pre_s,
                        "workers": args.workers, "skipped": len(stats["skipped"])},
        "encode": {"batch_size": args.batch_size, "seconds": enc_s, "tokens": enc_tokens,
                   "tokens_per_s": enc_tokens / max(enc_s, 1e-9), "per_modality": rows},
        "speed_ratio": enc_s / pre_s,
        "note": "speed_ratio = batched encode seconds of the same data / pretokenize wall seconds (1 = as fast as "
                "the tokenizers alone); pretokenize tokens also count span markers, size tokens, <bos> and <eos>",
    }
    write_json(out, args.json)
    print(markdown_table(rows + [{"modality": "all (encode)", "inputs": sum(r["inputs"] for r in rows),
                                  "tokens": enc_tokens, "seconds": enc_s, "tokens_per_s": enc_tokens / max(enc_s, 1e-9)},
                                 {"modality": f"pretokenize ({args.workers} workers)", "inputs": stats["documents"],
                                  "tokens": stats["tokens"], "seconds": pre_s, "tokens_per_s": stats["tokens"] / pre_s}],
                         ["modality", "inputs", "tokens", "seconds", "tokens_per_s"],
                         {"seconds": ".2f", "tokens_per_s": ".0f"}), end="")
    print(f"speed ratio (encode seconds / pretokenize seconds): {out['speed_ratio']:.2f} -> {args.json}")
    return 0
