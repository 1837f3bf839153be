import torch

from unitok.generation.sample import filter_logits, generate
from unitok.model.config import debug
from unitok.model.transformer import UnifiedTransformer


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert torch.equal(out[torch.isfinite(out)], torch.tensor([5.0, 4.0]))


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()
    assert keep(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert keep(0.6) == [False, True, True, False]
    assert keep(0.81) == [False, True, True, True]
    assert keep(0.01) == [False, True, False, False]  # always at least the top token
    assert keep(1.0) == [True] * 4
    # filtered distribution renormalizes over the kept tokens
    p = filter_logits(logits, top_p=0.6).softmax(-1)[0]
    assert torch.allclose(p, torch.tensor([0.0, 0.5 / 0.8, 0.3 / 0.8, 0.0]))


def test_top_k_and_top_p_batched():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    out = filter_logits(logits, top_k=3, top_p=0.7)
    assert torch.isfinite(out).tolist() == [[True, True, False, False], [False, False, True, True]]


def test_generate_greedy_matches_full_forward_and_seed_is_reproducible():
    torch.manual_seed(0)
    m = UnifiedTransformer(debug()).eval()
    prompt = [1, 2, 3, 4]
    ids = generate(m, prompt, 10, temperature=0)
    seq = torch.tensor([prompt])
    for _ in range(10):  # greedy without cache
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert ids == seq[0, 4:].tolist()
    a = generate(m, prompt, 20, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    b = generate(m, prompt, 20, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert a == b and len(a) == 20
    c = generate(m, prompt, 20, temperature=1.0, seed=3, allowed=(100, 200))
    assert all(100 <= i < 200 for i in c)


def test_generate_refuses_a_request_past_the_context_window():
    """The window never slides (it could slide past a span's header): the request is refused."""
    import pytest

    from unitok.errors import ConfigError

    torch.manual_seed(0)
    m = UnifiedTransformer(debug()).eval()  # max_seq_len 64
    with pytest.raises(ConfigError, match="59 tokens \\+ 100 new tokens = 159 exceeds the model's context of 64 "
                                          "tokens.*at most 5 new tokens"):
        generate(m, list(range(1, 60)), 100, temperature=0)
    assert len(generate(m, list(range(1, 60)), 5, temperature=0)) == 5  # exactly full is fine
