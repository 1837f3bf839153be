"""The sampler: KV-cache decoding equals recomputation, batched left-padded prompts decode as they would
alone, seeds, per-modality settings, repetition penalty, beam search, context refusal, classifier-free
guidance (scale 1 = off, scale 0 = the unconditional stream, built by the training rule), and
`unitok bench generate` (fields, not speeds)."""

import json

import numpy as np
import pytest
import torch

from unitok.data.packed import drop_conditions
from unitok.errors import ConfigError
from unitok.generation import (Sampling, beam_search, check_guidance, condition_dropout, generate, generate_batch,
                               unconditional_prompt)
from unitok.generation.guidance import modalities
from unitok.generation.sample import penalize_repeats, resolve_sampling
from unitok.grammar import SpanGrammar
from unitok.model.config import debug
from unitok.model.transformer import UnifiedTransformer
from unitok.vocab import CodebookSpec, Modality, UnifiedVocab

VOCAB = UnifiedVocab(40, [CodebookSpec("image", 12)], max_size=3)
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [3, 3, 3, 3, 3]]


def peaky_model(vocab_size: int = 97, std: float = 0.3, **kw) -> UnifiedTransformer:
    """An untrained model whose greedy choices are far from ties (weights with std 0.3, untied head):
    top-1/top-2 logit gaps along these tests' paths are ~1e-2, fp32 differences between the paths ~1e-6."""
    torch.manual_seed(0)
    m = UnifiedTransformer(debug(vocab_size=vocab_size, tie_embeddings=False, **kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return m


def full_greedy(m, prompt, n):
    """Greedy decoding by hand: the whole sequence through the model every step, no cache."""
    seq = torch.tensor([prompt])
    for _ in range(n):
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[0, len(prompt):].tolist()


def test_kv_cache_decoding_equals_full_recomputation():
    m = peaky_model()
    for p in PROMPTS:
        ids = generate(m, p, 20, temperature=0)
        assert ids == full_greedy(m, p, 20)
        assert ids == generate(m, p, 20, temperature=0, use_cache=False)
    assert len(set(map(tuple, (generate(m, p, 20, temperature=0) for p in PROMPTS)))) == 3  # not a constant


def test_batched_prompts_of_different_lengths_decode_as_alone():
    m = peaky_model()
    alone = [generate(m, p, 16, temperature=0) for p in PROMPTS]
    assert generate_batch(m, PROMPTS, 16, temperature=0) == alone
    assert generate_batch(m, PROMPTS, 16, temperature=0, use_cache=False) == alone
    # the logits themselves: a left-padded prefill and decode step vs each row alone
    cache = m.new_cache(3, 9)
    ids = torch.zeros(3, 7, dtype=torch.long)
    valid = torch.zeros(3, 7, dtype=torch.bool)
    for i, p in enumerate(PROMPTS):
        ids[i, 7 - len(p):], valid[i, 7 - len(p):] = torch.tensor(p), True
    pre = m(ids, cache=cache, valid=valid)[:, -1]
    nxt = m(torch.tensor([[5], [6], [7]]), cache=cache)[:, -1]
    assert cache.seen.tolist() == [8, 3, 6]  # real tokens per row
    # RoPE positions start at 0 at each row's first real token (padding: 0, masked), as in training
    pos = m.new_cache(3, 9).begin(7, valid)
    assert pos.tolist() == [list(range(7)), [0] * 5 + [0, 1], [0, 0, 0, 1, 2, 3, 4]]
    for i, p in enumerate(PROMPTS):
        ref = m(torch.tensor([p + [5 + i]]))[0]
        assert (pre[i] - ref[-2]).abs().max() < 1e-5 and (nxt[i] - ref[-1]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="left-padded"):
        m(ids, cache=m.new_cache(3, 9), valid=valid.flip(1))


def test_finished_rows_do_not_disturb_the_others():
    m = peaky_model()
    alone = [generate(m, p, 12, temperature=0) for p in PROMPTS]
    stop = alone[1][2]  # the second row stops after its third token, the others go on (unless they meet it)
    got = generate_batch(m, PROMPTS, 12, temperature=0, stop_ids={stop})
    for a, g in zip(alone, got):
        cut = a.index(stop) + 1 if stop in a else len(a)
        assert g == a[:cut]
    assert len(got[1]) == 3


def test_seed_reproducible_and_different_seeds_differ():
    m = peaky_model()
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)
    a = generate_batch(m, PROMPTS, 24, seed=3, **kw)
    assert a == generate_batch(m, PROMPTS, 24, seed=3, **kw)
    assert a != generate_batch(m, PROMPTS, 24, seed=4, **kw)
    assert a == generate_batch(m, PROMPTS, 24, seed=3, use_cache=False, **kw)  # same draws without the cache


def test_top_k_1_and_temperature_0_are_greedy():
    m = peaky_model()
    greedy = generate_batch(m, PROMPTS, 16, temperature=0)
    assert generate_batch(m, PROMPTS, 16, temperature=1.5, top_k=1, seed=0) == greedy
    assert generate_batch(m, PROMPTS, 16, temperature=1.0, top_p=1e-6, seed=1) == greedy  # top-p keeps the top id


def test_repetition_penalty_lowers_the_repeated_token():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5], [2.0, 1.0, -1.0, 0.5]])
    seen = torch.tensor([[True, False, True, False], [False, False, False, False]])
    out = penalize_repeats(logits, seen, 2.0)
    assert out[0].tolist() == [1.0, 1.0, -2.0, 0.5] and torch.equal(out[1], logits[1])
    p0, p1 = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert p1[0] < p0[0] and p1[2] < p0[2] and p1[1] > p0[1]
    # in generation: a heavy penalty never repeats an id of the row (greedy, text only)
    m = peaky_model()
    ids = generate(m, [1, 2], 30, temperature=0, repetition_penalty=1e4)
    assert len(set(ids) | {1, 2}) == len(ids) + 2
    assert len(set(generate(m, [1, 2], 30, temperature=0))) < 30  # without it this model repeats


def test_beam_search():
    m = peaky_model()
    for p in PROMPTS:
        assert beam_search(m, p, 12, beams=1) == generate(m, p, 12, temperature=0)
    # with as many beams as sequences, the search is exhaustive: 5 allowed ids, 3 new tokens (a flatter
    # model, where greedy is not always best; best vs second-best sequence: >= 0.05 nats apart)
    import itertools

    m = peaky_model(std=0.1)

    @torch.no_grad()
    def logp(p, ids):
        lp = m(torch.tensor([p + list(ids)]))[0, len(p) - 1:-1, 10:15].log_softmax(-1)
        return float(lp.gather(1, torch.tensor(ids)[:, None] - 10).sum())

    beats_greedy = 0
    for p in PROMPTS:
        best = max(itertools.product(range(10, 15), repeat=3), key=lambda ids: logp(p, ids))
        assert beam_search(m, p, 3, beams=25, allowed=(10, 15)) == list(best)
        beats_greedy += list(best) != generate(m, p, 3, temperature=0, allowed=(10, 15))
    assert beats_greedy >= 2  # the search matters on these prompts
    g = generate(m, PROMPTS[0], 12, temperature=0)
    assert beam_search(m, PROMPTS[0], 12, beams=1, eos_id=g[3]) == g[:g.index(g[3]) + 1]  # ends on eos, kept


def test_a_request_longer_than_the_context_is_refused():
    m = peaky_model()  # max_seq_len 64
    with pytest.raises(ValueError, match=r"prompt of 60 tokens \+ 10 new tokens = 70 exceeds the model's context "
                                         r"of 64 tokens \(max_seq_len\); ask for at most 4 new tokens"):
        generate_batch(m, [[1] * 60, [1]], 10, temperature=0)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        beam_search(m, [1] * 60, 10)
    with pytest.raises(ValueError, match="shorten the prompt"):
        generate(m, [1] * 64, 1)
    assert len(generate(m, [1] * 60, 4, temperature=0)) == 4


def test_sampling_settings_per_modality():
    s = resolve_sampling()
    assert s["image"].top_k == 0 and s["image"].top_p == 1.0 and 0 < s["text"].top_k
    s = resolve_sampling({"image": Sampling(top_k=100)}, temperature=0.5)
    assert s["image"].top_k == 100 and s["image"].temperature == 0.5 == s["text"].temperature
    with pytest.raises(ValueError, match="unknown modality 'pixels'"):
        resolve_sampling({"pixels": Sampling()})
    with pytest.raises(ValueError, match="invalid sampling"):
        Sampling(top_p=0)
    # greedy inside image spans, sampled text: the image codes are the argmax ones whatever the seed
    m = peaky_model(VOCAB.size, max_seq_len=48)
    g = SpanGrammar(VOCAB)
    prompt = [VOCAB.bos, 5, VOCAB.special["<boi>"], VOCAB.size_token(2), VOCAB.size_token(2)]
    settings = {"image": Sampling(temperature=0), "text": Sampling(temperature=1.0)}
    runs = [generate(m, prompt, 12, sampling=settings, seed=s, grammar=g.start(prompt)) for s in range(4)]
    assert all(r[:5] == runs[0][:5] for r in runs) and runs[0][4] == VOCAB.special["<eoi>"]
    assert len({tuple(r[5:]) for r in runs}) > 1  # the text after the span is sampled


def test_unconditional_prompt_follows_the_training_rule():
    boi, eoi, s2 = VOCAB.special["<boi>"], VOCAB.special["<eoi>"], VOCAB.size_token(2)
    code = VOCAB.code_range("image")[0]
    doc = VOCAB.pack([{"text": [5, 6]}, {"image": np.zeros((2, 2), np.int64)}, {"text": [7]},
                      {"image": np.ones((1, 1), np.int64)}])
    assert modalities(doc.ids, VOCAB).tolist() == doc.modality.astype(np.int64).tolist()
    assert unconditional_prompt(doc.ids, VOCAB) == drop_conditions(doc.ids, doc.modality.astype(np.int64))[0].tolist()
    prompt = [VOCAB.bos, 5, 6, boi, s2, s2, code]  # ends inside the span
    assert unconditional_prompt(prompt, VOCAB) == [VOCAB.bos, boi, s2, s2, code]
    assert modalities(prompt, VOCAB).tolist() == [0, 0, 0] + [int(Modality.IMAGE)] * 4
    after = [boi, s2, s2, code, eoi, 7]
    assert unconditional_prompt([VOCAB.bos, 5] + after, VOCAB) == [VOCAB.bos] + after
    assert unconditional_prompt([VOCAB.bos, 5, 6], VOCAB) == [VOCAB.bos, 5, 6]  # no span yet: unchanged
    assert condition_dropout({"task": {"cond_dropout": 0.1}}) == 0.1 and condition_dropout({"step": 3}) is None
    check_guidance(3.0, 0.1)
    check_guidance(1.0, 0.0)
    with pytest.raises(ConfigError, match="cond_dropout 0"):
        check_guidance(3.0, 0.0)


def test_guidance_scale_1_is_plain_sampling_and_0_is_the_unconditional_stream():
    m = peaky_model(VOCAB.size, max_seq_len=48)
    g = SpanGrammar(VOCAB)
    boi, s2, s3 = VOCAB.special["<boi>"], VOCAB.size_token(2), VOCAB.size_token(3)
    prompts = [[VOCAB.bos, 5, 6, 7, boi, s2, s3], [VOCAB.bos, 9, boi, s3, s2]]
    for seed in range(3):
        plain = generate_batch(m, prompts, 14, temperature=1.0, seed=seed, grammar=g)
        assert generate_batch(m, prompts, 14, temperature=1.0, seed=seed, grammar=g, cfg_scale=1.0) == plain
        guided = generate_batch(m, prompts, 14, temperature=1.0, seed=seed, grammar=g, cfg_scale=4.0)
        assert guided != plain
        for p, ids in zip(prompts, guided):  # still whole spans
            assert not VOCAB.unpack(p + ids).problems
    # scale 0 samples the span from the unconditional stream alone: greedy, it is the greedy continuation
    # of the unconditional prompt, and both streams were one left-padded batch (cached or not)
    for cache in (True, False):
        got = generate_batch(m, prompts, 7, temperature=0, grammar=g, cfg_scale=0.0, use_cache=cache)
        for p, ids in zip(prompts, got):
            u = unconditional_prompt(p, VOCAB)
            assert u == [VOCAB.bos] + p[-3:]
            assert ids == generate(m, u, 7, temperature=0, grammar=g.start(u))


def test_guidance_only_inside_spans_and_rebuilt_when_a_span_opens():
    m = peaky_model(VOCAB.size, max_seq_len=48)
    g = SpanGrammar(VOCAB)
    boi = VOCAB.special["<boi>"]
    opened = 0
    for first in range(20):
        p = [VOCAB.bos, first, 3]
        plain = generate(m, p, 20, temperature=0, grammar=g.start(p))
        # outside spans guidance is off, even against a different unconditional prompt
        far = generate(m, p, 20, temperature=0, grammar=g.start(p), cfg_scale=5.0, uncond_prompt=[VOCAB.bos, 30])
        k = plain.index(boi) if boi in plain else len(plain)
        assert far[:k + 1] == plain[:k + 1]
        if boi not in plain:
            continue
        opened += 1
        # scale 0: once the span opens, its tokens come from the unconditional stream, rebuilt by the rule
        got = generate(m, p, 20, temperature=0, grammar=g.start(p), cfg_scale=0.0)
        assert got[:k + 1] == plain[:k + 1]
        u = unconditional_prompt(p + got[:k + 1], VOCAB)
        assert u[-1] == boi and len(u) < len(p) + k + 1
        end = got.index(VOCAB.special["<eoi>"], k)
        alone = generate(m, u, end - k, temperature=0, grammar=g.start(u))
        assert got[k + 1:end + 1] == alone
    assert opened >= 2, opened


def test_spans_are_kept_inside_the_context():
    """A grammar never opens (or sizes) a span it cannot finish before max_seq_len."""
    m = peaky_model(VOCAB.size, max_seq_len=24)
    g = SpanGrammar(VOCAB)
    boi = VOCAB.special["<boi>"]
    for seed in range(10):
        p = [VOCAB.bos, 5, boi]  # a span opened with 21 tokens of room: header + grid + end must fit
        ids = generate(m, p, 21, temperature=1.0, seed=seed, grammar=g.start(p))
        assert len(p) + len(ids) <= 24 and not VOCAB.unpack(p + ids).problems
        p = [VOCAB.bos] + [5] * 18  # 5 tokens of room: at most a 1x1 image (5 tokens) fits
        ids = generate(m, p, 5, temperature=1.0, seed=seed, grammar=g.start(p), top_k=0, top_p=1.0)
        assert len(p) + len(ids) <= 24 and not VOCAB.unpack(p + ids).problems
    st = g.start([VOCAB.bos, boi, VOCAB.size_token(3)])
    assert st.fitting(st.allowed(), 5) == [(VOCAB.size_start, VOCAB.size_start + 1)]  # 3 x 1 codes + <eoi>
    assert st.fitting(st.allowed(), 7) == [(VOCAB.size_start, VOCAB.size_start + 1)]
    assert st.fitting(st.allowed(), 8) == [(VOCAB.size_start, VOCAB.size_start + 2)]  # 3 x 2 codes + <eoi>
    assert boi not in dict(g.start().fitting(g.start().allowed(), 4))


def test_bench_generate_writes_its_fields(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    from unitok.cli import main

    forward, calls = LlamaForCausalLM.forward, []

    def spy(model, input_ids=None, **kw):  # what transformers' model is fed, and its next-id logits
        out = forward(model, input_ids=input_ids, **kw)
        calls.append((input_ids.clone(), out.logits[:, -1].detach().clone()))
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", spy)
    out = tmp_path / "gen.json"
    assert main(["bench", "generate", "--preset", "debug", "--new-tokens", "4", "--prompt-len", "3",
                 "--batch-sizes", "1,2", "--full-batch-sizes", "1,2", "--repeats", "1", "--device", "cpu",
                 "--temperature", "2", "--top-k", "3", "--json", str(out)]) == 0
    # transformers' runs: 8 calls (warm-up and timed, batch 1 and 2, greedy then sampled), each the 3-id
    # prompt then 3 steps that feed only the id just chosen (its KV cache holds the rest); greedy feeds the
    # most likely id, sampling one of the 3 most likely, and not always the most likely one
    assert [tuple(ids.shape) for ids, _ in calls] == [(b, n) for b in (1, 2) for _ in (0, 1) for n in (3, 1, 1, 1)] * 2
    greedy, sampled = [], []
    for i, ((_, logits), (ids, _)) in enumerate(zip(calls, calls[1:])):
        if ids.shape[1] == 1:
            (sampled if i // 4 % 2 else greedy).append((ids[:, 0], logits))
    assert all(torch.equal(chosen, logits.argmax(-1)) for chosen, logits in greedy)
    assert all(c in row.topk(3).indices for chosen, logits in sampled for c, row in zip(chosen, logits))
    assert any(not torch.equal(chosen, logits.argmax(-1)) for chosen, logits in sampled)
    r = json.loads(out.read_text())
    assert r["preset"] == "debug" and r["new_tokens"] == 4 and r["batch_sizes"] == [1, 2] and r["device"] == "cpu"
    assert r["model"]["dim"] == 32 and r["model"]["n_kv_head"] == 2
    assert r["model"]["params"] - r["model"]["transformers_params"] == 2 * 2 * 8  # the same but QK-norm
    assert [x["batch"] for x in r["results"]] == [1, 2]
    for x in r["results"]:
        for k in ("cache", "full", "transformers"):
            assert x[f"{k}_tokens_per_s"] > 0 and len(x[f"{k}_runs"]) == 1
        assert x["cache_equals_full"] is True and x["cache_vs_transformers"] > 0
        for k in ("cache_sampled", "transformers_sampled"):
            assert x[f"{k}_tokens_per_s"] > 0 and len(x[f"{k}_runs"]) == 1
        assert x["sampled_cache_vs_transformers"] == pytest.approx(x["cache_sampled_tokens_per_s"]
                                                                   / x["transformers_sampled_tokens_per_s"])
    assert r["sampling"] == {"temperature": 2.0, "top_k": 3, "top_p": 1.0, "seed": 0}
    assert main(["bench", "generate", "--preset", "debug", "--new-tokens", "4", "--prompt-len", "3",
                 "--batch-sizes", "1,2", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())  # full recomputation by default only at batch 1
    assert r["full_batch_sizes"] == [1] and r["results"][1]["full_runs"] == []
    assert r["results"][1]["cache_equals_full"] is None and r["results"][0]["cache_equals_full"] is True
    assert main(["bench", "generate", "--preset", "debug", "--new-tokens", "60", "--prompt-len", "8",
                 "--json", str(out)]) == 2  # 68 > 64: refused in one line
    assert main(["bench", "generate", "--preset", "debug", "--temperature", "0", "--json", str(out)]) == 2
