"""The sampler's rules at their edges: settings that are refused, temperature as a divisor, a penalty
of 1 as the identity, the context refusal's wording at its limits, an id range that starts at 0, rows
that finish apart under a grammar, rows in different modalities drawn with their own settings, and the
KV-cache stepper's row replacement and growth against full forwards."""

import pytest
import torch

from test_generation import VOCAB, peaky_model
from unitok.errors import ContextLengthError
from unitok.generation.sample import Sampling, _Cached, _draw, check_context, generate, generate_batch, penalize_repeats
from unitok.grammar import SpanGrammar


def test_settings_at_their_limits():
    for ok in (dict(temperature=0), dict(top_k=0), dict(top_p=1.0), dict(top_p=1e-6), dict(repetition_penalty=1e-3)):
        Sampling(**ok)
    for bad in (dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.01), dict(repetition_penalty=0)):
        with pytest.raises(ValueError, match="invalid sampling settings"):
            Sampling(**bad)


def test_temperature_divides_the_logits():
    """4,000 seeded draws between two ids with logits 0 and 1: P(second) = sigmoid(1 / T)."""
    logits = torch.tensor([[0.0, 1.0]]).expand(4000, 2)
    gen = torch.Generator().manual_seed(0)
    for t, p in ((0.5, 0.881), (1.0, 0.731), (4.0, 0.562)):
        got = _draw(logits, Sampling(temperature=t), None, gen).float().mean().item()
        assert abs(got - p) < 0.03, (t, got)


def test_a_penalty_of_1_changes_nothing():
    logits, seen = torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(penalize_repeats(logits, seen, 1.0), logits)


def test_context_refusals_at_their_limits():
    with pytest.raises(ContextLengthError, match="max_new_tokens must be >= 1, got 0"):
        check_context([3], 0, 64)
    with pytest.raises(ContextLengthError, match="ask for at most 1 new tokens"):
        check_context([63, 2], 5, 64)
    check_context([63], 1, 64)


def test_an_id_range_from_0():
    m = peaky_model()
    assert generate(m, [1, 2], 3, temperature=1.0, seed=0, allowed=(0, 1)) == [0, 0, 0]


def test_rows_finish_apart_under_a_grammar():
    """A row that stops (a stop id, or <eos> ends its grammar) leaves the others as they would be alone."""
    m = peaky_model(VOCAB.size, max_seq_len=48)
    g = SpanGrammar(VOCAB)
    prompts = [[VOCAB.bos, 5, 6, 7], [VOCAB.bos, 9], [VOCAB.bos, 3, 3]]
    alone = [generate(m, p, 10, temperature=0, grammar=g.start(p)) for p in prompts]
    stop = alone[1][1]
    got = generate_batch(m, prompts, 10, temperature=0, grammar=g, stop_ids={stop})
    for a, b in zip(alone, got):
        assert b == (a[:a.index(stop) + 1] if stop in a else a)
    assert len(got[1]) == 2 and max(map(len, got)) > 2


def test_rows_in_different_modalities_draw_with_their_own_settings():
    """One row samples text hot, the other is inside an image span with temperature 0: its codes are the
    greedy ones whatever the seed."""
    m = peaky_model(VOCAB.size, max_seq_len=48)
    g = SpanGrammar(VOCAB)
    text, image = [VOCAB.bos, 5, 6], [VOCAB.bos, 5, VOCAB.special["<boi>"], VOCAB.size_token(2), VOCAB.size_token(2)]
    settings = {"image": Sampling(temperature=0), "text": Sampling(temperature=5.0)}
    greedy = generate(m, image, 5, temperature=0, grammar=g.start(image))
    texts = set()
    for seed in range(4):
        rows = generate_batch(m, [text, image], 5, sampling=settings, seed=seed, grammar=g)
        assert rows[1] == greedy
        texts.add(tuple(rows[0]))
    assert len(texts) > 1


def test_the_cached_stepper_replaces_rows_and_grows_as_a_full_forward_would():
    m = peaky_model()
    st = _Cached(m, slots=4)
    st.prefill([[1, 2, 3], [4, 5]])
    st.replace(1, [7, 8, 9])  # the row becomes another sequence (guidance rebuilding its unconditional stream)
    a = st.step(torch.tensor([6, 10]), [True, True])
    b = st.step(torch.tensor([11, 12]), [True, True])  # past the 4 slots: the cache grows
    with torch.no_grad():
        for row, seq, out in ((0, [1, 2, 3, 6, 11], b), (1, [7, 8, 9, 10, 12], b), (0, [1, 2, 3, 6], a), (1, [7, 8, 9, 10], a)):
            ref = m(torch.tensor([seq]))[0, -1]
            assert (out[row] - ref).abs().max() < 1e-4, (row, seq)
