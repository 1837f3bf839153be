"""Sampling from a `UnifiedTransformer`: prefill the prompt once, then decode one
token per step from the KV cache, with temperature, top-k and top-p.

    ids = generate(model, prompt_ids, max_new_tokens=200, temperature=0.8, top_k=50, top_p=0.95, seed=0)
    unitok lm sample runs/lm --prompt "ROMEO:" --max-new-tokens 200 --top-p 0.9
"""

from __future__ import annotations

import torch

from unitok.model.transformer import UnifiedTransformer

__all__ = ["filter_logits", "generate", "run_cli"]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf.

    logits: (B, V). top-p keeps the smallest set of highest-probability tokens
    whose total probability reaches top_p (always at least the most likely one).
    """
    logits = logits.clone()
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits[logits < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop_sorted = before >= top_p  # (B, V), never drops the first
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


@torch.no_grad()
def generate(model: UnifiedTransformer, prompt: list[int] | torch.Tensor, max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, stop_ids: set[int] | None = None,
             allowed: tuple[int, int] | None = None, grammar=None) -> list[int]:
    """Sample up to `max_new_tokens` ids after `prompt` (list of ids, or (T,) tensor).

    temperature 0 is greedy. `allowed` = [start, end) restricts sampling to an id
    range (e.g. text ids only). `grammar`: a `unitok.grammar.GrammarState` positioned after the
    prompt; each step samples only ids it allows (so every media span is whole) and advances it;
    generation ends when it allows nothing (after <eos>), and a span still open at
    `max_new_tokens` is finished the shortest allowed way. Past the model's context (max_seq_len),
    the cache is rebuilt from the last max_seq_len // 2 tokens (prefill again) and decoding goes on.
    """
    model.eval()
    seq = torch.as_tensor(prompt, dtype=torch.long).flatten().tolist()
    if not seq:
        raise ValueError("generation needs at least one prompt token (e.g. <bos>)")
    max_len = model.cfg.max_seq_len
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def prefill(ids):
        cache = model.new_cache(1, max_len)
        return cache, model(torch.tensor([ids]), cache=cache)[:, -1]  # (1, V)

    cache, logits = prefill(seq[-max_len:])
    out: list[int] = []
    while True:
        over = len(out) >= max_new_tokens  # with a grammar, an open span is still finished
        if over and (grammar is None or grammar.modality is None):
            break
        if allowed is not None:
            logits[:, : allowed[0]] = float("-inf")
            logits[:, allowed[1]:] = float("-inf")
        if grammar is not None:
            ranges = grammar.closing() if over else grammar.allowed()
            if not ranges:
                break
            logits = logits.masked_fill(~grammar.grammar.mask(ranges, logits.device), float("-inf"))
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
        tok = int(nxt)
        if grammar is not None:
            grammar.push(tok)
        out.append(tok)
        seq.append(tok)
        if (stop_ids and tok in stop_ids) or (len(out) >= max_new_tokens and (grammar is None or grammar.modality is None)):
            break  # (before the next forward: nothing is computed that is not used)
        if cache.pos == max_len:  # context full: slide the window
            cache, logits = prefill(seq[-(max_len // 2):])
        else:
            logits = model(nxt[:, None], cache=cache)[:, -1]  # one-token decode
    return out


def run_cli(args) -> int:
    from unitok.checkpoint import load_model
    from unitok.errors import CheckpointError

    ck = load_model(args.checkpoint)
    if ck.kind != "transformer" or "text" not in ck.tokenizers:
        raise CheckpointError(f"{ck.path}: not a language model with a text tokenizer")
    tok, vocab, model = ck.tokenizers["text"], ck.vocab, ck.model
    prompt = [vocab.bos] + tok.encode(args.prompt)
    ids = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, allowed=(0, vocab.text_size))
    print(args.prompt + tok.decode(ids))
    return 0
