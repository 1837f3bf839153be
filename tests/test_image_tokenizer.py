"""Image tokenizer: shapes, save/load, taming-format checkpoints, parity with taming's modules."""

import importlib
import json
import os

import pytest
import torch

from unitok.errors import CheckpointError
from unitok.tokenizers.base import load_tokenizer
from unitok.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, image_preset, NLayerDiscriminator
from unitok.tokenizers.quantizers import QuantizerConfig
from upstream_layouts import landed, random_state, read_layout


def _taming_like_cfg():
    # taming VQModel layout: plain learned codebook (no EMA, no low-dim lookup), attention at 8x8.
    return ImageTokenizerConfig(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], resolution=32,
                                z_channels=32, embed_dim=16,
                                quantizer=QuantizerConfig(codebook_size=64, ema=False, kmeans_init=False))


def test_encode_decode_shapes_and_levels():
    torch.manual_seed(0)
    tok = ImageTokenizer(image_preset("debug")).eval()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 8, 12) and codes.dtype == torch.long  # f4
    assert tok.decode(codes).shape == x.shape
    assert tok.codebook_sizes == [64]
    rvq = ImageTokenizer(ImageTokenizerConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=32, embed_dim=8,
                                              quantizer=QuantizerConfig(kind="rvq", levels=3, codebook_size=16))).eval()
    c = rvq.encode(x)
    assert c.shape == (2, 3, 16, 24) and rvq.codebook_sizes == [16, 16, 16]
    assert rvq.decode(c).shape == x.shape
    with pytest.raises(ValueError, match="multiple of the downsampling"):
        tok.encode(torch.zeros(1, 3, 30, 32))


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer(image_preset("debug"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tok.train()
    tok(x)  # k-means init of the codebook
    tok.eval()
    tok.save_pretrained(tmp_path / "t")
    back = load_tokenizer(tmp_path / "t")
    assert isinstance(back, ImageTokenizer)
    assert torch.equal(back.encode(x), tok.encode(x))
    torch.testing.assert_close(back.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def _to_taming_state(tok: ImageTokenizer) -> dict:
    sd = {k: v.clone() for k, v in tok.state_dict().items() if not k.startswith("quantize.")}
    sd["quantize.embedding.weight"] = tok.quantize.vq._codebook.embed[0].clone()
    sd["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)  # ignored on load
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    return sd


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_taming_checkpoint_loads_and_reproduces(tmp_path, fmt):
    torch.manual_seed(0)
    ref = ImageTokenizer(_taming_like_cfg()).eval()
    with torch.no_grad():
        ref.quantize.vq._codebook.embed.normal_()
    sd = _to_taming_state(ref)
    path = tmp_path / f"vqgan.{fmt}"
    if fmt == "ckpt":
        torch.save({"state_dict": sd, "global_step": 7}, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for cfg in (None, _taming_like_cfg()):  # inferred from the weights, or given
        tok = ImageTokenizer.from_taming(path, cfg)
        assert torch.equal(tok.encode(x), ref.encode(x))
        torch.testing.assert_close(tok.decode(tok.encode(x)), ref.decode(ref.encode(x)))
    # the same through a taming YAML
    yaml_path = tmp_path / "vqgan.yaml"
    yaml_path.write_text("model:\n  params:\n    embed_dim: 16\n    n_embed: 64\n    ddconfig: {double_z: false, "
                         "z_channels: 32, resolution: 32, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2, 2], "
                         "num_res_blocks: 1, attn_resolutions: [8], dropout: 0.0}\n")
    tok = ImageTokenizer.from_taming(path, yaml_path)
    assert torch.equal(tok.encode(x), ref.encode(x))


def test_taming_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read PyTorch checkpoint"):
        ImageTokenizer.from_taming(bad)
    with pytest.raises(CheckpointError, match="not found"):
        ImageTokenizer.from_taming(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        ImageTokenizer.from_taming(tmp_path / "x.ckpt")


def _taming(module: str):
    """Import a taming-transformers module. scripts/setup_env.sh installs taming, so a missing one is
    a broken set-up and fails the test; UNITOK_ALLOW_MISSING_TAMING=1 turns that into a skip."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        msg = (f"taming-transformers is missing ({e}); scripts/setup_env.sh installs it "
               "(pip install --no-deps taming-transformers==0.0.1)")
        if os.environ.get("UNITOK_ALLOW_MISSING_TAMING") == "1":
            pytest.skip(msg + "; skipped: UNITOK_ALLOW_MISSING_TAMING=1")
        pytest.fail(msg + "; set UNITOK_ALLOW_MISSING_TAMING=1 to skip this test instead")


def test_taming_checkpoint_in_the_real_vqmodel_layout(tmp_path):
    """A checkpoint with the keys and shapes of taming's own VQModel (with its LPIPS + discriminator
    loss, recorded from the package by scripts/record_layouts.py), every tensor distinct: the
    architecture is inferred from it (and read from its YAML), the loss is ignored, and every other
    tensor lands in the parameter of the same name (the codebook in the quantizer)."""
    layout = read_layout("taming_vqgan_small.json")
    params, dd = layout["params"], layout["params"]["ddconfig"]
    state = random_state(layout, seed=3)
    assert any(k.startswith("loss.perceptual_loss.net.") for k in state)
    assert any(k.startswith("loss.discriminator.") and k.endswith("num_batches_tracked") for k in state)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state}, path)
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text(json.dumps({"model": {"target": "taming.models.vqgan.VQModel", "params": params}}))
    for config in (None, yaml_path):
        tok = ImageTokenizer.from_taming(path, config)
        c = tok.config
        assert (c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.embed_dim, c.quantizer.size) == (
            dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"], params["embed_dim"], params["n_embed"])
        attn_levels = lambda res, attn: [i for i in range(len(c.ch_mult)) if res // 2 ** i in attn]  # noqa: E731
        assert attn_levels(c.resolution, c.attn_resolutions) == attn_levels(dd["resolution"], dd["attn_resolutions"])
        ours = tok.state_dict()
        where = landed(state, ours)
        for k, v in state.items():
            if k.startswith("loss."):
                assert k not in where, f"{k} (training loss) was loaded into {where.get(k)}"
            elif k == "quantize.embedding.weight":
                assert torch.equal(tok.quantize.vq._codebook.embed[0], v)
            else:
                assert where.get(k) == k and torch.equal(ours[k], v), (k, where.get(k))
        assert not [k for k in ours if k not in state and not k.startswith("quantize.vq.")]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert tok.decode(tok.encode(x)).shape == x.shape


def test_chameleon_vqgan_layout_matches_the_preset():
    """Chameleon's tokenizer is a taming VQModel (recorded from taming with its ddconfig): its
    layout loads into the `chameleon` preset, and inference from the weights finds that preset.
    Shapes only (meta tensors): the real model has 70M parameters."""
    from unitok.tokenizers.image import _taming_config

    layout = read_layout("taming_vqgan_chameleon.json")
    state = random_state(layout, device="meta")
    preset = image_preset("chameleon")
    with torch.device("meta"):
        tok = ImageTokenizer(preset)
    tok.load_taming_state_dict(state, source="chameleon layout")  # CheckpointError on any name or shape mismatch
    inferred = _taming_config(None, state, "chameleon layout")
    for f in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "in_channels"):
        assert getattr(inferred, f) == getattr(preset, f), f
    assert inferred.quantizer.size == preset.quantizer.size == 8192


def test_parity_with_taming_modules():
    tm = _taming("taming.modules.diffusionmodules.model")
    td = _taming("taming.modules.discriminator.model")
    torch.manual_seed(0)
    dd = dict(ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], in_channels=3,
              resolution=32, z_channels=32, double_z=False, dropout=0.0)
    te, tdec = tm.Encoder(**dd).eval(), tm.Decoder(**dd).eval()
    ours = ImageTokenizer(_taming_like_cfg()).eval()
    ours.encoder.load_state_dict(te.state_dict())  # strict: identical names and shapes
    ours.decoder.load_state_dict(tdec.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = te(x)
        torch.testing.assert_close(ours.encoder(x), z, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.decoder(z), tdec(z), atol=1e-5, rtol=1e-4)
        d_ref, d_ours = td.NLayerDiscriminator(3, 64, 3).eval(), NLayerDiscriminator(3, 64, 3).eval()
        d_ours.load_state_dict(d_ref.state_dict())
        torch.testing.assert_close(d_ours(x), d_ref(x))


def test_norm_groups_zero_keeps_taming_names_and_image_means():
    """norm_groups 0: per-channel affine instead of GroupNorm, same state-dict keys and shapes, and
    (unlike GroupNorm) a constant colour offset of the input reaches the latent."""
    gn = ImageTokenizer(image_preset("debug")).eval()
    cfg = image_preset("debug")
    cfg.norm_groups = 0
    aff = ImageTokenizer(cfg).eval()
    assert {k: v.shape for k, v in gn.state_dict().items()} == {k: v.shape for k, v in aff.state_dict().items()}
    x = torch.rand(1, 3, 32, 32) * 0.5
    shifted = x + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert not torch.allclose(aff.encoder(x), aff.encoder(shifted), atol=1e-4)
    ImageTokenizerConfig(ch=24, ch_mult=[1, 2], norm_groups=0)  # no divisibility check without groups
    with pytest.raises(ValueError, match="norm_groups must be >= 0"):
        ImageTokenizerConfig(norm_groups=-1)
