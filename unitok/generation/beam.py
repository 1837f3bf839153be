"""Beam search for text: the `beams` best continuations by length-normalised log-probability.

    ids = beam_search(model, prompt_ids, max_new_tokens=40, beams=4, eos_id=vocab.eos)

One prompt; the beams are the rows of one KV cache, reordered after every step. A hypothesis ends
when it takes `eos_id` or a stop id (kept) or reaches `max_new_tokens`; its score is
sum(log p) / len ** length_penalty (len = new tokens; length_penalty 0 = raw sum, which favours short
answers). The search stops when `beams` hypotheses have ended. With beams=1 it is greedy decoding.
"""

from __future__ import annotations

import torch

from unitok.generation.sample import check_context
from unitok.model.transformer import UnifiedTransformer

__all__ = ["beam_search"]


@torch.no_grad()
def beam_search(model: UnifiedTransformer, prompt, max_new_tokens: int, *, beams: int = 4,
                eos_id: int | None = None, stop_ids=None, length_penalty: float = 1.0,
                allowed: tuple[int, int] | None = None) -> list[int]:
    """The new ids of the best hypothesis. `allowed` = [start, end) restricts the search to an id range."""
    model.eval()
    seq = torch.as_tensor(prompt, dtype=torch.long).flatten().tolist()
    V = model.cfg.vocab_size
    if not seq:
        raise ValueError("beam search needs at least one prompt token (e.g. <bos>)")
    if beams < 1:
        raise ValueError(f"beams must be >= 1, got {beams}")
    check_context([len(seq)], max_new_tokens, model.cfg.max_seq_len)
    stops = set(stop_ids or ()) | ({eos_id} if eos_id is not None else set())
    device = model.output_weight.device
    keep = None
    if allowed is not None:
        keep = torch.zeros(V, dtype=torch.bool, device=device)
        keep[allowed[0]:allowed[1]] = True

    def logprobs(ids, cache):
        h = model.hidden(ids, cache=cache)[:, -1]
        logits = model.logits(h)  # (beams, V)
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits.log_softmax(-1)

    cache = model.new_cache(1, len(seq) + max_new_tokens - 1)
    logp = logprobs(torch.tensor([seq], device=device), cache)
    cache.reorder(torch.zeros(beams, dtype=torch.long, device=device))  # every beam starts from the prompt
    logp = logp.expand(beams, V)
    score = torch.full((beams,), float("-inf"), device=device)
    score[0] = 0.0  # identical beams at first: expand one of them only
    hyps: list[list[int]] = [[] for _ in range(beams)]
    ended: list[tuple[float, list[int]]] = []

    def norm(total: float, n: int) -> float:
        return total / n ** length_penalty

    for step in range(max_new_tokens):
        cand = (score[:, None] + logp).view(-1)  # (beams * V,)
        top = torch.topk(cand, min(2 * beams, cand.numel()))
        rows, toks, scores, alive = [], [], [], []
        for total, i in zip(top.values.tolist(), top.indices.tolist()):
            if total == float("-inf"):
                break
            r, t = divmod(i, V)
            h = hyps[r] + [t]
            if t in stops or step == max_new_tokens - 1:
                ended.append((norm(total, len(h)), h))
            else:
                rows.append(r)
                toks.append(t)
                scores.append(total)
                alive.append(h)
            if len(alive) == beams:
                break
        if len(ended) >= beams or not alive or step == max_new_tokens - 1:
            break
        idx = torch.tensor(rows, device=device)
        cache.reorder(idx)
        hyps = alive
        score = torch.tensor(scores, device=device)
        logp = logprobs(torch.tensor(toks, device=device)[:, None], cache)
    return max(ended, key=lambda e: e[0])[1]  # the last step ends every hypothesis, so none is left out
