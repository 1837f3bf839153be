"""`unitok bench generate`: decode speed of the sampler with its KV cache, without it (every step
recomputes the whole sequence), and of Hugging Face transformers' `LlamaForCausalLM.generate` at the
same dimensions, side by side in one run.

    unitok bench generate --preset small --new-tokens 256 --prompt-len 32 --batch-sizes 1,8 --repeats 3 \
        --json out/generate.json [--device cuda --dtype bfloat16]

Both models are randomly initialised from the preset: dim, layers, heads, kv heads, vocabulary, FFN
width, max positions, RoPE theta, norm eps and tied embeddings are the same; ours also has QK-norm
where the preset has it (Llama has none). Exactly --new-tokens tokens per row (no end-of-sequence
stop), random prompt ids (the same for all), `use_cache=True` for transformers, each decoded two
ways: greedy (cache, full, transformers), and sampled at --temperature with --top-k (no top-p, no
repetition penalty) from a fixed seed (cache_sampled against transformers' `do_sample=True`
with the same temperature and top-k; the ids differ, the models' weights do). A run is one whole
`generate` call, prefill included; new tokens/s = batch x new tokens / seconds. Runs alternate
(rotating the order of the implementations every repeat) after one untimed warm-up of each, so a
noisy machine hurts all alike; the JSON keeps every run and reports medians. `cache_equals_full`
checks that both of our greedy paths produced the same ids. Full recomputation is timed only at
`--full-batch-sizes` (default 1): at batch 8 on CPU one run takes minutes.
"""

from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["run", "llama_twin"]

IMPLS = ("cache", "full", "transformers", "cache_sampled", "transformers_sampled")
SEED = 0  # of the sampled runs, ours and transformers' alike


def llama_twin(cfg, dtype=torch.float32):
    """A randomly initialised `LlamaForCausalLM` with the dimensions of a `ModelConfig`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    lc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
                     num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                     num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len,
                     rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                     tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    lc._attn_implementation = "sdpa"
    return LlamaForCausalLM(lc).to(dtype).eval()


def _timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, out


def run(args) -> int:
    from unitok.reporting import markdown_table, write_json
    from unitok.errors import ConfigError
    from unitok.generation.sample import check_context, generate_batch
    from unitok.model.config import preset
    from unitok.model.transformer import UnifiedTransformer

    try:
        cfg = preset(args.preset)
        batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
        full_sizes = {int(b) for b in str(getattr(args, "full_batch_sizes", "1")).split(",") if b.strip()}
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    except (ValueError, KeyError) as e:
        raise ConfigError(f"bench generate: {e}") from None
    if not batch_sizes or min(batch_sizes) < 1 or args.repeats < 1 or args.prompt_len < 1:
        raise ConfigError("bench generate: --batch-sizes, --repeats and --prompt-len must be >= 1")
    temperature, top_k = args.temperature, args.top_k
    if temperature <= 0 or top_k < 1:
        raise ConfigError("bench generate: --temperature must be > 0 and --top-k >= 1 (the sampled runs)")
    check_context([args.prompt_len], args.new_tokens, cfg.max_seq_len)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench generate: --device cuda but CUDA is not available")
    import transformers

    torch.manual_seed(0)
    ours = UnifiedTransformer(cfg).to(device=device, dtype=dtype).eval()
    hf = llama_twin(cfg, dtype).to(device)
    rng = np.random.default_rng(0)
    prompts = {B: rng.integers(0, cfg.vocab_size, (B, args.prompt_len)).tolist() for B in batch_sizes}
    N = args.new_tokens

    def call(impl: str, B: int, n: int):
        p, sampled = prompts[B], impl.endswith("_sampled")
        if impl.startswith("transformers"):
            ids = torch.tensor(p, device=device)
            kw = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0) if sampled else \
                dict(do_sample=False)
            torch.manual_seed(SEED)  # transformers samples from the global generator
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  use_cache=True, pad_token_id=0, **kw)
            return out[:, ids.shape[1]:].tolist()
        if sampled:  # the same filters as transformers' call: no top-p, no repetition penalty
            return generate_batch(ours, p, n, temperature=temperature, top_k=top_k, top_p=1.0,
                                  repetition_penalty=1.0, seed=SEED, use_cache=True)
        return generate_batch(ours, p, n, temperature=0, use_cache=impl == "cache")

    def impls(B: int) -> tuple[str, ...]:
        return IMPLS if B in full_sizes else tuple(i for i in IMPLS if i != "full")

    for B in batch_sizes:  # warm-up: allocator, kernels, lazy imports
        for impl in impls(B):
            call(impl, B, min(N, 4))
    runs = {(impl, B): [] for B in batch_sizes for impl in impls(B)}
    ids = {}
    for r in range(args.repeats):
        for B in batch_sizes:
            order = impls(B)[r % len(impls(B)):] + impls(B)[:r % len(impls(B))]
            for impl in order:
                dt, out = _timed(lambda: call(impl, B, N), device)
                runs[(impl, B)].append(B * N / dt)
                ids[(impl, B)] = out
                if any(len(o) != N for o in out):
                    raise RuntimeError(f"{impl} produced {[len(o) for o in out]} tokens, not {N} per row")
                print(f"repeat {r + 1}/{args.repeats}: batch {B} {impl} {runs[(impl, B)][-1]:.1f} tokens/s "
                      f"({dt:.1f} s)", flush=True)
    rows = []
    for B in batch_sizes:
        med = {impl: float(np.median(runs[(impl, B)])) if (impl, B) in runs else None for impl in IMPLS}
        full = med["full"] is not None
        rows.append({"batch": B, "cache_tokens_per_s": med["cache"], "full_tokens_per_s": med["full"],
                     "transformers_tokens_per_s": med["transformers"],
                     "cache_vs_full": med["cache"] / med["full"] if full else None,
                     "cache_vs_transformers": med["cache"] / med["transformers"],
                     "cache_sampled_tokens_per_s": med["cache_sampled"],
                     "transformers_sampled_tokens_per_s": med["transformers_sampled"],
                     "sampled_cache_vs_transformers": med["cache_sampled"] / med["transformers_sampled"],
                     "cache_runs": runs[("cache", B)], "full_runs": runs.get(("full", B), []),
                     "transformers_runs": runs[("transformers", B)],
                     "cache_sampled_runs": runs[("cache_sampled", B)],
                     "transformers_sampled_runs": runs[("transformers_sampled", B)],
                     "cache_equals_full": ids[("cache", B)] == ids[("full", B)] if full else None})
    out = {
        "preset": args.preset,
        "model": {"dim": cfg.dim, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads,
                  "vocab_size": cfg.vocab_size, "ffn_hidden": cfg.hidden_dim, "max_seq_len": cfg.max_seq_len,
                  "qk_norm": cfg.qk_norm, "tie_embeddings": cfg.tie_embeddings, "params": ours.num_params(),
                  "transformers_params": sum(p.numel() for p in hf.parameters())},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "new_tokens": N, "prompt_len": args.prompt_len,
        "batch_sizes": batch_sizes, "full_batch_sizes": sorted(full_sizes & set(batch_sizes)), "repeats": args.repeats,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": 1.0, "seed": SEED}, "results": rows,
        "timing": "one whole generate call per run, greedy or sampled (prefill included), new tokens/s = batch x "
                  "new tokens / seconds; medians over alternating runs after one warm-up each",
    }
    write_json(out, args.json)
    print(markdown_table(rows, ["batch", "cache_tokens_per_s", "full_tokens_per_s", "transformers_tokens_per_s",
                                "cache_vs_full", "cache_vs_transformers", "cache_equals_full",
                                "cache_sampled_tokens_per_s", "transformers_sampled_tokens_per_s",
                                "sampled_cache_vs_transformers"],
                         {"cache_tokens_per_s": ".1f", "full_tokens_per_s": ".1f", "transformers_tokens_per_s": ".1f",
                          "cache_vs_full": ".2f", "cache_vs_transformers": ".2f", "cache_sampled_tokens_per_s": ".1f",
                          "transformers_sampled_tokens_per_s": ".1f", "sampled_cache_vs_transformers": ".2f"}),
          end="")
    print(f"greedy, and sampled at temperature {temperature}, top-k {top_k}, seed {SEED}; batch x "
          f"(prompt {args.prompt_len} + {N} new tokens); {out['device']}, {args.dtype} -> {args.json}")
    return 0
