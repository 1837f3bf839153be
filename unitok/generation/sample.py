"""Sampling from a `UnifiedTransformer`: prefill the prompts once, then decode one token per step
from the KV cache.

    ids = generate(model, prompt_ids, max_new_tokens=200, temperature=0.8, top_k=50, seed=0)
    rows = generate_batch(model, [p1, p2, p3], 64, seed=0)    # prompts of any lengths, left-padded
    unitok lm sample runs/lm --prompt "ROMEO:" --max-new-tokens 100 --top-p 0.9

* Batches: prompts of different lengths are left-padded; padding is masked out and every row's RoPE
  positions start at 0 at its first real token, so a row decodes as it would alone.
* Settings per modality (`Sampling`: temperature, top-k, top-p, repetition penalty): `DEFAULTS` keeps
  the full distribution inside image / video / audio spans and narrows it for text; `sampling=`
  replaces a modality's settings, the keyword arguments (`temperature=` ...) override one field in
  every modality. Without a grammar every token counts as text; with one (`unitok.grammar`) its state
  says which modality is being generated, and only ids it allows are sampled.
* Stops: `eos_id` and `stop_ids` (the stop token is kept), `max_new_tokens`, the grammar's end.
* Seeded: one `torch.Generator` per call (on the model's device), so a seed gives the same ids.
* Classifier-free guidance: `cfg_scale` != 1 batches an unconditional stream with the conditional one
  (2B rows, one forward) and samples from uncond + scale * (cond - uncond) inside media spans only
  (`unitok.generation.guidance`). A scale of 1 is off: no second stream.
* Context: a request whose prompt + max_new_tokens exceeds the model's max_seq_len is refused
  (`ContextLengthError`); nothing is truncated or slid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from unitok.errors import ContextLengthError
from unitok.model.transformer import UnifiedTransformer

__all__ = ["Sampling", "DEFAULTS", "resolve_sampling", "filter_logits", "penalize_repeats", "generate",
           "generate_batch", "check_context", "run_cli"]


@dataclass(frozen=True)
class Sampling:
    """How one modality's tokens are drawn. temperature 0 = greedy; top_k 0 and top_p 1 = no filter;
    repetition_penalty 1 = off (>1 divides the positive logits of ids already in the row, prompt
    included, and multiplies the negative ones: CTRL, arXiv 1909.05858)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"invalid sampling settings {self}: need temperature >= 0, top_k >= 0, "
                             "0 < top_p <= 1, repetition_penalty > 0")


# Media codes are drawn from the full distribution: image grids are locally repetitive and a narrow
# top-k flattens them (LlamaGen samples class-to-image with top-k 0, top-p 1; Lumina-mGPT and Emu3 use
# top-k ~2000 of 8-16k codes, i.e. nearly all). Text is narrower (Lumina-mGPT: top-k 10).
DEFAULTS = {
    "text": Sampling(temperature=0.8, top_k=50, top_p=0.95),
    "image": Sampling(),
    "video": Sampling(),
    "audio": Sampling(),
}


def resolve_sampling(sampling=None, *, temperature: float | None = None, top_k: int | None = None,
                     top_p: float | None = None, repetition_penalty: float | None = None) -> dict[str, Sampling]:
    """Settings per modality: `DEFAULTS`, then `sampling` (one `Sampling` for every modality, or a dict
    modality -> `Sampling`), then each keyword that is not None, in every modality."""
    out = dict(DEFAULTS)
    if isinstance(sampling, Sampling):
        out = {m: sampling for m in out}
    elif sampling:
        unknown = set(sampling) - set(out)
        if unknown:
            raise ValueError(f"sampling: unknown modality {sorted(unknown)[0]!r}; use {', '.join(out)}")
        out.update(sampling)
    over = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty).items() if v is not None}
    return {m: replace(s, **over) for m, s in out.items()} if over else out


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


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits: (B, V); seen: (B, V) bool, ids already in each row. Seen ids get logit / penalty where
    it is positive and logit * penalty where negative, so for penalty > 1 they always lose probability."""
    if penalty == 1:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _draw(logits: torch.Tensor, s: Sampling, seen: torch.Tensor | None, gen) -> torch.Tensor:
    """One id per row (R,) from masked logits (R, V) with one modality's settings."""
    if seen is not None:
        logits = penalize_repeats(logits, seen, s.repetition_penalty)
    if s.temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / s.temperature, s.top_k, s.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def check_context(prompt_lengths, max_new_tokens: int, max_seq_len: int) -> None:
    """Refuse (ContextLengthError, one line) a request that cannot fit the model's context."""
    if max_new_tokens < 1:
        raise ContextLengthError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(prompt_lengths)
    if longest + max_new_tokens > max_seq_len:
        room = max_seq_len - longest
        raise ContextLengthError(
            f"prompt of {longest} tokens + {max_new_tokens} new tokens = {longest + max_new_tokens} exceeds the "
            f"model's context of {max_seq_len} tokens (max_seq_len); "
            + (f"ask for at most {room} new tokens" if room > 0 else "shorten the prompt"))


# ---------------------------------------------------------------------------------------------- steppers
class _Cached:
    """Rows of token ids -> next-token logits, from the KV cache: prefill once, one token a step."""

    def __init__(self, model: UnifiedTransformer, slots: int):
        self.model, self.slots = model, slots

    def _last(self, ids, cache, valid=None) -> torch.Tensor:
        h = self.model.hidden(ids, cache=cache, valid=valid)[:, -1]  # (R, dim): logits of the last position only
        return self.model.logits(h)

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        ids, valid = _left_pad(rows, self.model.output_weight.device)
        self.cache = self.model.new_cache(len(rows), self.slots)
        return self._last(ids, self.cache, None if bool(valid.all()) else valid)

    def step(self, tokens: torch.Tensor, feed: list[bool]) -> torch.Tensor:
        """One token per row; rows where `feed` is False (finished) take it as padding."""
        c = self.cache
        if c.pos == c.max_len:  # a grammar finishing a span past the budget, or finished rows: more slots
            c.grow(2 * c.max_len)
        valid = None if all(feed) else torch.tensor(feed, device=tokens.device)[:, None]
        return self._last(tokens[:, None], c, valid)

    def replace(self, row: int, ids: list[int]) -> None:
        """Row `row` becomes `ids` (its next token not yet fed)."""
        one = self.model.new_cache(1, len(ids))
        self.model.hidden(torch.tensor([ids], device=self.model.output_weight.device), cache=one)
        self.cache.load_row(row, one)


class _Full:
    """The same without a cache: every step runs the whole (left-padded) sequences again."""

    def __init__(self, model: UnifiedTransformer, slots: int):
        self.model = model

    def _run(self) -> torch.Tensor:
        ids, valid = _left_pad(self.rows, self.model.output_weight.device)
        h = self.model.hidden(ids, valid=None if bool(valid.all()) else valid)[:, -1]
        return self.model.logits(h)

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        self.rows = [list(r) for r in rows]
        return self._run()

    def step(self, tokens: torch.Tensor, feed: list[bool]) -> torch.Tensor:
        for r, t, f in zip(self.rows, tokens.tolist(), feed):
            if f:
                r.append(t)
        return self._run()

    def replace(self, row: int, ids: list[int]) -> None:
        self.rows[row] = list(ids)


def _left_pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> ids (R, T) left-padded with 0, valid (R, T) bool."""
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        valid[i, T - len(r):] = True
    return ids.to(device), valid.to(device)


# ---------------------------------------------------------------------------------------------- sampling
def _masks(keys: list, active: list[int], cache: dict, V: int, allowed, device) -> torch.Tensor:
    """(B, V) bool: the ids each row may take (its grammar ranges, `keys[b]`, None = all; within
    `allowed`). One (V,) mask per distinct set of ranges, kept in `cache` for the whole call."""
    for k in dict.fromkeys(keys[b] for b in active):
        if k not in cache:
            m = torch.zeros(V, dtype=torch.bool, device=device)
            for lo, hi in (k if k is not None else [(0, V)]):
                m[lo:hi] = True
            if allowed is not None:
                m[:allowed[0]] = False
                m[allowed[1]:] = False
            if not bool(m.any()):
                raise ValueError(f"nothing can be sampled: allowed={allowed} excludes every id the grammar "
                                 f"allows ({k})")
            cache[k] = m
    filler = cache[keys[active[0]]]  # finished rows: any mask (their draw is not used)
    return torch.stack([filler if keys[b] is None and b not in active else cache[keys[b]] for b in range(len(keys))])


def _sample(logits: torch.Tensor, mods: list[str], active: list[int], settings: dict, seen, gen) -> torch.Tensor:
    """(B,) ids: one draw per modality group of the active rows, groups in a fixed order."""
    nxt = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    for m in dict.fromkeys(mods[b] for b in active):
        group = [b for b in active if mods[b] == m]
        s = settings[m]
        use_seen = seen is not None and s.repetition_penalty != 1
        if len(group) == logits.shape[0]:  # every row: no gather
            return _draw(logits, s, seen if use_seen else None, gen)
        idx = torch.tensor(group, device=logits.device)
        nxt[idx] = _draw(logits[idx], s, seen[idx] if use_seen else None, gen)
    return nxt


@torch.no_grad()
def generate_batch(model: UnifiedTransformer, prompts, max_new_tokens: int, *, sampling=None,
                   temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float | None = None, seed: int | None = None, eos_id: int | None = None,
                   stop_ids=None, allowed: tuple[int, int] | None = None, grammar=None, cfg_scale: float = 1.0,
                   uncond_prompts=None, use_cache: bool = True, progress=None) -> list[list[int]]:
    """Sample up to `max_new_tokens` ids after each prompt (lists of ids, any lengths); returns the new
    ids of each row.

    sampling / temperature / top_k / top_p / repetition_penalty: see `resolve_sampling` (temperature 0
    is greedy). eos_id, stop_ids: a row stops after sampling one of them (it is kept). allowed:
    [start, end) restricts sampling to an id range (e.g. text ids only). grammar: one
    `unitok.grammar.GrammarState` per prompt positioned after it (or a `SpanGrammar`, started on each
    prompt); each row samples only ids its state allows (so every media span is whole), stops when it
    allows nothing (after <eos>), and a span still open at `max_new_tokens` is finished the shortest
    allowed way, and no span is opened or sized beyond what the context holds. cfg_scale:
    classifier-free guidance inside media spans (needs a grammar); the unconditional prompts default
    to `guidance.unconditional_prompt` of each prompt, rebuilt by that rule when a span opens
    (`uncond_prompts` given are kept as they are). use_cache=False recomputes the whole sequences
    every step (for tests and the benchmark). progress: called with the number of steps done (new
    tokens per row so far) after each step, e.g. to drive a progress bar.
    """
    from unitok.grammar import SpanGrammar

    model.eval()
    rows = [torch.as_tensor(p, dtype=torch.long).flatten().tolist() for p in prompts]
    B, V, ctx = len(rows), model.cfg.vocab_size, model.cfg.max_seq_len
    if B == 0 or any(not r for r in rows):
        raise ValueError("generation needs at least one prompt token per row (e.g. <bos>)")
    if any(min(r) < 0 or max(r) >= V for r in rows):
        raise ValueError(f"prompt ids must be in [0, {V}) (the model's vocabulary)")
    check_context([len(r) for r in rows], max_new_tokens, ctx)
    settings = resolve_sampling(sampling, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty)
    if isinstance(grammar, SpanGrammar):
        grammar = [grammar.start(r) for r in rows]
    elif grammar is not None and not isinstance(grammar, (list, tuple)):
        grammar = [grammar]
    if grammar is not None and len(grammar) != B:
        raise ValueError(f"{len(grammar)} grammar states for {B} prompts")
    guided = cfg_scale != 1
    if guided:
        from unitok.generation.guidance import check_guidance, unconditional_prompt

        check_guidance(cfg_scale, None)
        if grammar is None:
            raise ValueError("classifier-free guidance needs a grammar (it applies inside media spans only)")
        vocab = grammar[0].grammar.vocab
        by_rule = uncond_prompts is None  # given ones (e.g. a negative prompt) are kept as they are
        uncond = [unconditional_prompt(r, vocab) for r in rows] if by_rule else [list(u) for u in uncond_prompts]
        if len(uncond) != B or any(not u for u in uncond):
            raise ValueError(f"need one non-empty unconditional prompt per prompt ({B})")
        check_context([len(u) for u in uncond], max_new_tokens, ctx)
    stops = set(stop_ids or ()) | ({eos_id} if eos_id is not None else set())
    device = model.output_weight.device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    all_rows = rows + (uncond if guided else [])
    slots = max(len(r) for r in all_rows) + max_new_tokens - 1  # the last sampled token is never fed
    stepper = (_Cached if use_cache else _Full)(model, slots)
    logits = stepper.prefill(all_rows)  # (R, V)

    penal = any(s.repetition_penalty != 1 for s in settings.values())
    seen = None
    if penal:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        for b, r in enumerate(rows):
            seen[b, r] = True
    masks: dict = {}  # ranges -> (V,) bool, built once per call
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    last = [r[-1] for r in rows]
    steps = 0
    while True:
        cond = logits[:B]
        mods = [("text" if grammar is None or grammar[b].modality is None else grammar[b].modality) for b in range(B)]
        if guided:
            media = [b for b in range(B) if grammar[b].modality is not None and not done[b]]
            if media:
                idx = torch.tensor(media, device=device)
                c, u = cond[idx], logits[B:][idx]
                cond = cond.clone()
                cond[idx] = u + cfg_scale * (c - u)
        # what may come next, per row
        keys = []
        for b in range(B):
            if done[b]:
                keys.append(None)
                continue
            ranges = None
            if grammar is not None:
                st = grammar[b]
                over = len(out[b]) >= max_new_tokens  # an open span is finished the shortest way
                room = ctx - len(rows[b]) - len(out[b])  # the row's tokens left in the context
                ranges = tuple(st.fitting(st.closing() if over else st.allowed(), room))
                if not ranges:
                    done[b] = True
                    keys.append(None)
                    continue
            keys.append(ranges)
        active = [b for b in range(B) if not done[b]]
        if not active:
            break
        if grammar is not None or allowed is not None:
            cond = cond.masked_fill(~_masks(keys, active, masks, V, allowed, device), float("-inf"))
        toks = _sample(cond, mods, active, settings, seen, gen).tolist()
        rebuild = []
        for b in active:
            t = toks[b]
            opened = False
            if grammar is not None:
                was = grammar[b].modality
                grammar[b].push(t)
                opened = was is None and grammar[b].modality is not None
            out[b].append(t)
            last[b] = t
            if t in stops or (len(out[b]) >= max_new_tokens and (grammar is None or grammar[b].modality is None)):
                done[b] = True
            elif guided and by_rule and opened:
                rebuild.append(b)
        if penal:
            seen[torch.tensor(active, device=device), torch.tensor([toks[b] for b in active], device=device)] = True
        steps += 1
        if progress is not None:
            progress(steps)
        if all(done):
            break  # before the next forward: nothing is computed that is not used
        for b in rebuild:  # a span opened: this row's unconditional stream by the training rule
            stepper.replace(B + b, unconditional_prompt(rows[b] + out[b], vocab)[:-1])
        tokens = torch.tensor(last, device=device)  # finished rows: padding (masked, positions kept)
        feed = [not d for d in done]
        if guided:
            tokens, feed = torch.cat([tokens, tokens]), feed + feed
        logits = stepper.step(tokens, feed)
    return out


def generate(model: UnifiedTransformer, prompt, max_new_tokens: int, *, grammar=None, uncond_prompt=None,
             **kw) -> list[int]:
    """`generate_batch` for one prompt (list of ids or (T,) tensor): its new ids. `grammar`: one
    `GrammarState` (or a `SpanGrammar`); `uncond_prompt`: the unconditional prompt for guidance."""
    return generate_batch(model, [prompt], max_new_tokens, grammar=grammar,
                          uncond_prompts=None if uncond_prompt is None else [uncond_prompt], **kw)[0]


def run_cli(args) -> int:
    from unitok.checkpoint import load_model
    from unitok.errors import CheckpointError

    ck = load_model(args.checkpoint)
    if ck.kind != "transformer" or "text" not in ck.tokenizers:
        raise CheckpointError(f"{ck.path}: not a language model with a text tokenizer")
    tok, vocab, model = ck.tokenizers["text"], ck.vocab, ck.model
    prompt = [vocab.bos] + tok.encode(args.prompt)
    n = args.max_new_tokens if args.max_new_tokens is not None else max(model.cfg.max_seq_len - len(prompt), 0)
    # An option left out is no filter, as this command has always read it (not the text defaults).
    ids = generate(model, prompt, n, temperature=args.temperature,
                   top_k=0 if args.top_k is None else args.top_k, top_p=1.0 if args.top_p is None else args.top_p,
                   seed=args.seed, allowed=(0, vocab.text_size))
    print(args.prompt + tok.decode(ids))
    return 0
