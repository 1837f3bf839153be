"""Dead-code expiry of the tokenizer presets: which codes one training step re-seeds.

Every VQ / RVQ preset in tokenizers/*/config.yaml gets the same codebook state: random live codes
with an EMA hit count of LIVE, and eight codes far from the data whose counts are set to LOW. One
training step on a fixed batch replaces the codes whose count fell below the preset's threshold; a
code counts as replaced when its vector differs from the same step with expiry off. LIVE is far from
1 so that the two readings of the threshold differ: as an absolute count (vector-quantize-pytorch
1.32's `threshold_ema_dead_code`, which the presets were trained with) or as a fraction of the mean
count (1.34, where the mean here is about LIVE; it re-seeds more codes, for every preset).
EXPECTED was recorded with the code of commit 6bfba22 (before the option was ever mapped onto
1.34's `dead_code_threshold_ratio`) under vector-quantize-pytorch 1.32.0.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOW = [1e-5, 1e-3, 4e-3, 0.02, 0.05, 0.15, 0.4, 0.7]  # EMA hit counts of codes 0..7
LIVE = 16.0  # EMA hit count of the other codes
EXPECTED = {  # preset -> the codes (of 0..7) one step re-seeds, in every codebook (level) of it
    "audio-encodec-16k": [0, 1, 2, 3, 4, 5],  # threshold 0.25: codes whose count x decay 0.95 is below it
    "audio-lm-16k": [0, 1, 2, 3, 4, 5],  # 0.25
    "image-vq-f16": [0, 1],  # 0.003
    "image-vq-f8-1cb": [0, 1, 2],  # 0.01
    "image-vqgan-f8": [0, 1, 2, 3, 4],  # 0.1
    "video-vq3d-f8t4": [0, 1, 2, 3, 4],  # 0.1
}


def _preset_quantizer(name: str, threshold: float | None = None):
    """The vector-quantize-pytorch module a preset trains (threshold: override dead_code_threshold)
    and its input width."""
    from unitok.config import from_dict

    data = yaml.safe_load((ROOT / "tokenizers" / name / "config.yaml").read_text())
    if data["modality"] == "audio":
        from unitok.tokenizers.audio import AudioTokenizer
        from unitok.training.encodec import EncodecRecipe

        mcfg = from_dict(EncodecRecipe, data).model
        if threshold is not None:
            mcfg = replace(mcfg, dead_code_threshold=threshold)
        return AudioTokenizer(mcfg).quantizer, mcfg.hidden_size
    from unitok.tokenizers.quantizers import Quantizer
    from unitok.training.vqgan import TrainConfig, build_tokenizer

    qcfg = build_tokenizer(from_dict(TrainConfig, data)).quantize.cfg
    if threshold is not None:
        qcfg = replace(qcfg, dead_code_threshold=threshold)
    dim = qcfg.codebook_dim or 8  # the lookup width itself: no projection in between
    return Quantizer(qcfg, dim).vq, dim


def _codebooks(module):
    return [m for m in module.modules() if hasattr(m, "cluster_size") and hasattr(m, "embed_avg")]


def _step(module, dim: int) -> list[torch.Tensor]:
    """Set the codebook state, train one step on a fixed batch; every codebook's vectors after it."""
    gen = torch.Generator().manual_seed(0)
    for cb in _codebooks(module):
        k = cb.embed.shape[1]
        embed = torch.randn(k, dim, generator=gen)
        embed[:len(LOW)] = -10.0  # never the nearest code of the (positive) batch, nor of its residuals
        if cb.use_cosine_sim:
            embed = torch.nn.functional.normalize(embed, dim=-1)
        size = torch.full((k,), LIVE)
        size[:len(LOW)] = torch.tensor(LOW)
        cb.embed.copy_(embed[None])
        cb.cluster_size.copy_(size[None])
        cb.embed_avg.copy_((embed * size[:, None])[None])
        cb.initted.fill_(True)
    z = torch.randn(2, 32, dim, generator=gen) * 0.3 + 1.0  # 64 vectors
    module.train()
    torch.manual_seed(0)  # re-seeded codes are drawn from the batch
    with torch.no_grad():
        module(z)
    return [cb.embed[0].clone() for cb in _codebooks(module)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_replaces_the_codes_it_replaced_before(name):
    assert sorted(p.parent.name for p in (ROOT / "tokenizers").glob("*/config.yaml")) == sorted(EXPECTED)
    with_expiry = _step(*_preset_quantizer(name))
    without = _step(*_preset_quantizer(name, threshold=0.0))
    assert len(with_expiry) == len(without) >= 1
    for level, (a, b) in enumerate(zip(with_expiry, without)):
        replaced = (a - b).abs().amax(-1) > 1e-4
        assert replaced.nonzero().flatten().tolist() == EXPECTED[name], (name, level)


def test_a_count_of_one_or_more_is_a_threshold_too():
    """An absolute count may be 1 or more: a threshold of 2 re-seeds every code hit less than twice
    (the eight LOW ones) and no live one."""
    from unitok.tokenizers.quantizers import Quantizer, QuantizerConfig

    cfg = QuantizerConfig(kind="rvq", levels=2, codebook_size=32, codebook_dim=8, dead_code_threshold=2.0)
    with_expiry = _step(Quantizer(cfg, 8).vq, 8)
    without = _step(Quantizer(replace(cfg, dead_code_threshold=0.0), 8).vq, 8)
    for a, b in zip(with_expiry, without):
        assert ((a - b).abs().amax(-1) > 1e-4).nonzero().flatten().tolist() == list(range(len(LOW)))


def test_generate_on_vq_tokenizers_prints_only_its_own_lines(tmp_path):
    """Loading VQ and RVQ tokenizers warns about no deprecated option: `unitok generate` writes
    nothing on stderr but its own progress lines (none for a run this short)."""
    import subprocess
    import sys

    from test_engine import ENV
    from test_pipeline import _checkpoint
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.text import TextTokenizer

    (tmp_path / "t.txt").write_text("a photo of a cat. the sound of a bird.\n" * 50)
    toks = {"text": TextTokenizer.train([tmp_path / "t.txt"], vocab_size=300),
            "image": ImageTokenizer(image_preset("debug")).eval(),  # one VQ
            "audio": AudioTokenizer(AudioTokenizerConfig.tiny()).eval()}  # an RVQ with dead-code expiry
    run = _checkpoint(tmp_path / "run", toks)
    r = subprocess.run([sys.executable, "-m", "unitok.cli", "generate", str(run), "--task", "text-to-image",
                        "--prompt", "a cat", "--size", "32", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "sample0.png" in r.stdout
    assert [line for line in r.stderr.splitlines() if not line.startswith("generate ")] == [], r.stderr
