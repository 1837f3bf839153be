"""The codebook refit and its k-means, on data whose answer is known (tests/test_lm_presets.py and
tests/test_audio_training.py refit inside whole training runs): points in well-separated clusters give
one centre per cluster, the codebook's EMA state is set to the fit, a frozen quantizer stays in eval
mode."""

import pytest
import torch

from unitok.errors import ConfigError
from unitok.tokenizers.quantizers import Quantizer, QuantizerConfig, kmeans


def _clusters(k: int, per: int, dim: int, seed: int = 0):
    """k centres 10 apart on the axes (k <= dim), `per` points within 0.1 of each: (points, centres)."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(dim)[:k]
    x = centres.repeat_interleave(per, 0) + 0.1 * torch.randn(k * per, dim, generator=g)
    return x, centres


def _match(found, centres):
    """For each true centre, the distance to the nearest found one."""
    return torch.cdist(centres, found).min(1).values


def test_kmeans_finds_separated_clusters_and_reseeds_empty_ones():
    x, centres = _clusters(4, 50, 6)
    c, n = kmeans(x, 4, 10, seed=1)
    assert c.shape == (4, 6) and (_match(c, centres) < 0.1).all() and n.tolist() == [50.0] * 4
    # more centres than clusters: duplicates of the starting points go empty and are moved onto the points
    # farthest from their centres, so in the end every centre holds points
    x2 = torch.cat([x[:3].repeat(40, 1), x[50:53].repeat(40, 1)])  # 240 points on 6 distinct spots
    c, n = kmeans(x2, 6, 8, seed=0)
    assert (n > 0).all() and n.sum() == 240
    assert torch.equal(kmeans(x, 4, 10, seed=1)[0], kmeans(x, 4, 10, seed=1)[0])  # seeded
    one = kmeans(x[:1], 3, 2)[0]  # fewer points than centres: copies of them
    assert one.shape == (3, 6) and torch.equal(one, x[:1].expand(3, 6)) and kmeans(x[:2], 3, 2)[0].shape == (3, 6)


def test_kmeans_moves_a_centre_left_with_one_point_onto_it():
    """0, 1 and 10 with two centres: {0, 1} and {10} from every start; starting from 0 and 1, the second
    centre first takes 1 and 10, then is left with 10 alone and must move there."""
    x = torch.tensor([[0.0], [1.0], [10.0]])
    for seed in range(8):
        c, n = kmeans(x, 2, 3, seed=seed)
        order = c[:, 0].argsort()
        assert c[order, 0].tolist() == [0.5, 10.0] and n[order].tolist() == [2.0, 1.0], seed


@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_refit_sets_the_codebook_and_its_ema_state_to_the_fit(codebook_dim):
    torch.manual_seed(0)
    q = Quantizer(QuantizerConfig(kind="vq", codebook_size=4, codebook_dim=codebook_dim, kmeans_init=True), 6)
    x, _ = _clusters(4, 30, 6)
    used = q.refit(x, iters=10)
    cb = q.vq._codebook
    assert used == 1.0 and bool(cb.initted)
    lookup = cb.transform_input(q.vq.project_in(x))  # the space the codes live in
    want, counts = kmeans(lookup, 4, 10, chunk=4096)
    assert torch.allclose(cb.embed[0], want, atol=1e-5)
    assert torch.equal(cb.cluster_size[0], counts) and counts.sum() == 120
    assert torch.allclose(cb.embed_avg[0], want * counts[:, None], atol=1e-4)
    if codebook_dim is None:  # (a random projection to 4 dimensions may merge two clusters)
        assert counts.tolist() == [30.0] * 4
        idx = q.eval()(x[None]).indices[0]  # every cluster on its own code
        assert [len(set(idx[i * 30:(i + 1) * 30].tolist())) for i in range(4)] == [1] * 4 and len(set(idx.tolist())) == 4
    half = Quantizer(QuantizerConfig(kind="vq", codebook_size=8, kmeans_init=True), 6)
    assert half.refit(x, iters=10) == 1.0  # empty clusters are reseeded, so all 8 codes hold points
    few = Quantizer(QuantizerConfig(kind="vq", codebook_size=8, kmeans_init=True), 6)
    assert few.refit(x[:3], iters=2) == 3 / 8  # 3 points: at most 3 codes hold one


def test_refit_of_cosine_codes_is_unit_norm_and_other_kinds_are_refused():
    q = Quantizer(QuantizerConfig(kind="vq", codebook_size=4, cosine=True, kmeans_init=True), 6)
    q.refit(_clusters(4, 20, 6)[0], iters=5)
    assert torch.allclose(q.vq._codebook.embed[0].norm(dim=-1), torch.ones(4), atol=1e-5)
    with pytest.raises(ConfigError, match="implemented for kind 'vq', not 'rvq'"):
        Quantizer(QuantizerConfig(kind="rvq", codebook_size=4, levels=2), 6).refit(torch.randn(10, 6))


def test_a_frozen_quantizer_stays_in_eval_mode():
    q = Quantizer(QuantizerConfig(kind="vq", codebook_size=4), 6)
    assert q.train().training and not q.eval().training
    q.frozen = True
    assert q.train() is q and not q.training and not q.vq.training
    q.frozen = False
    assert q.train().training
