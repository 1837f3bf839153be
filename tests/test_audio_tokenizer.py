"""EnCodec audio tokenizer: shapes, gradients, official-weight loading (both formats), resampler."""

import math

import pytest
import torch
import torch.nn.functional as F

from unitok.data.audio import resample, to_model_format
from unitok.errors import CheckpointError
from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig, hf_to_encodec_state_dict
from unitok.tokenizers.base import load_tokenizer
from upstream_layouts import landed, random_state, read_layout


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AudioTokenizer(AudioTokenizerConfig.tiny()).eval()


@pytest.mark.parametrize("n", [64 * 20, 1000, 64 * 7 + 1, 50])
@pytest.mark.parametrize("bandwidth,levels", [(None, 4), (0.2, 1), (0.5, 2)])
def test_encode_decode_shapes(tiny, n, bandwidth, levels):
    # tiny: 16 kHz, hop 64 -> 250 Hz frames, 6 bits -> 1.5 kbps per level
    bw = None if bandwidth is None else levels * 1.5
    x = torch.randn(2, 1, n) * 0.1
    codes = tiny.encode(x, bandwidth=bw)
    assert codes.shape == (2, levels, math.ceil(n / 64))
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < 64
    assert tiny.decode(codes, length=n).shape == (2, 1, n)
    assert tiny.decode(codes).shape == (2, 1, math.ceil(n / 64) * 64)
    # the first levels do not depend on how many are used
    full = tiny.encode(x)
    assert torch.equal(full[:, :levels], codes)


def test_bandwidths_and_errors(tiny):
    assert tiny.codebook_sizes == [64] * 4
    assert tiny.bandwidths == [1.5, 3.0, 4.5, 6.0]
    assert tiny.levels_for_bandwidth(4.0) == 2
    spec = tiny.codebook_spec()  # what the unified vocabulary needs: one range of 64 ids per level
    assert (spec.modality, spec.size, spec.levels) == ("audio", 64, 4) and spec.tokenizer["type"] == "audio-encodec"
    with pytest.raises(ValueError, match=r"\(B, 1, N\)"):
        tiny.encode(torch.randn(1, 2, 100))
    with pytest.raises(Exception, match="below one level"):
        tiny.encode(torch.randn(1, 1, 100), bandwidth=0.1)


def test_stereo_any_rate():
    tok = AudioTokenizer(AudioTokenizerConfig.tiny(channels=2, sample_rate=22050)).eval()
    x = torch.randn(1, 2, 3001) * 0.1
    codes = tok.encode(x)
    assert codes.shape == (1, 4, math.ceil(3001 / 64))
    assert tok.decode(codes, length=3001).shape == (1, 2, 3001)


def test_gradients_reach_encoder_and_codebooks_learn():
    """One training pass: every encoder and decoder tensor gets a non-zero gradient; the EMA codebooks
    move in train mode (repeated passes over one batch shrink the commitment loss), never in eval mode."""
    torch.manual_seed(0)
    tok = AudioTokenizer(AudioTokenizerConfig.tiny(quantize_dropout=False, dead_code_threshold=0.0)).train()
    x = torch.randn(4, 1, 2048) * 0.1
    books = tok.quantizer.codebooks.clone()  # (levels, codes, dim)
    y, codes, commit = tok(x)
    assert y.shape == x.shape and codes.shape == (4, 4, 32)
    ((y - x).abs().mean() + commit).backward()
    for name, module in (("encoder", tok.encoder), ("decoder", tok.decoder)):
        params = dict(module.named_parameters())
        dead = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, f"{len(dead)} of {len(params)} {name} tensors got no gradient: {dead[:4]}"
        assert all(torch.isfinite(p.grad).all() for p in params.values())
    # EMA: every level's codebook moved after one pass (no optimizer step was taken)
    moved = (tok.quantizer.codebooks - books).flatten(1).abs().amax(1)
    assert (moved > 0).all(), f"codebooks of levels {(moved == 0).nonzero().flatten().tolist()} did not move"
    with torch.no_grad():
        losses = [float(tok(x)[2]) for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0], f"EMA codebooks did not fit the batch: commitment {losses}"
    tok.eval()
    books = tok.quantizer.codebooks.clone()
    with torch.no_grad():
        tok(x)
    assert torch.equal(tok.quantizer.codebooks, books), "eval-mode forward changed the codebooks"


def test_save_load_roundtrip(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "t")
    back = load_tokenizer(tmp_path / "t")
    assert isinstance(back, AudioTokenizer)
    x = torch.randn(1, 1, 999) * 0.1
    assert torch.equal(back.encode(x), tiny.encode(x))
    assert torch.allclose(back.decode(tiny.encode(x)), tiny.decode(tiny.encode(x)))


# --- official weights -------------------------------------------------------------------------

def _tiny_hf(stereo48: bool = False):
    """A tiny transformers EncodecModel with random weights and random codebooks."""
    from transformers import EncodecConfig, EncodecModel

    kw = dict(num_filters=4, upsampling_ratios=[4, 2], hidden_size=8, num_lstm_layers=1, codebook_size=32,
              num_residual_layers=1)
    if stereo48:  # the 48 kHz model's structure: stereo, non-causal, time group norm, RMS-normalised 1 s chunks
        cfg = EncodecConfig(sampling_rate=800, audio_channels=2, norm_type="time_group_norm", use_causal_conv=False,
                            normalize=True, chunk_length_s=1.0, overlap=0.01, target_bandwidths=[0.5, 2.0], **kw)
    else:  # 24 kHz structure
        cfg = EncodecConfig(sampling_rate=800, audio_channels=1, target_bandwidths=[0.5, 2.0], **kw)
    torch.manual_seed(1)
    model = EncodecModel(cfg).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed) * 0.3)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
        for name, p in model.named_parameters():  # break the symmetry of any default-initialised params
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _hf_reference(model, x, bandwidth):
    enc = model.encode(x, bandwidth=bandwidth)
    codes = torch.cat(list(enc.audio_codes), -1)  # (chunks, B, L, T) -> (B, L, chunks*T)
    if enc.last_frame_pad_length:
        codes = codes[..., : codes.shape[-1] - enc.last_frame_pad_length]
    wav = model.decode(enc.audio_codes, enc.audio_scales, last_frame_pad_length=enc.last_frame_pad_length).audio_values
    return codes, wav


def test_hf_format_matches_transformers(tmp_path):
    model = _tiny_hf()
    model.save_pretrained(tmp_path / "hf")
    tok = AudioTokenizer.from_hf(tmp_path / "hf")
    # frame rate 100 Hz, 5 bits/level -> 0.5 kbps per level; bandwidth 2.0 -> 4 levels
    assert tok.config.levels == model.quantizer.num_quantizers and tok.frame_rate == 100
    x = torch.randn(2, 1, 1003) * 0.2
    for bw, levels in [(0.5, 1), (2.0, 4)]:
        ref_codes, ref_wav = _hf_reference(model, x, bw)
        codes = tok.encode(x, bandwidth=bw)
        assert codes.shape[1] == levels
        assert torch.equal(codes, ref_codes)
        wav = tok.decode(codes)
        assert torch.allclose(wav[..., : ref_wav.shape[-1]], ref_wav, atol=1e-5), (wav[..., :ref_wav.shape[-1]] - ref_wav).abs().max()
    # pytorch_model.bin variant, read with weights_only
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    tok2 = AudioTokenizer.from_hf(tmp_path / "bin")
    assert torch.equal(tok2.encode(x, bandwidth=2.0), tok.encode(x, bandwidth=2.0))


def test_hf_format_48k_structure_chunks_and_scales(tmp_path):
    model = _tiny_hf(stereo48=True)
    model.save_pretrained(tmp_path / "hf48")
    tok = AudioTokenizer.from_hf(tmp_path / "hf48")
    assert tok.config.normalize and tok.config.chunk_length_s == 1.0 and not tok.config.causal
    x = torch.randn(1, 2, 2100) * 0.3  # 800 Hz rate, 1 s chunks with 1% overlap -> 3 chunks
    ref_codes, ref_wav = _hf_reference(model, x, 2.0)
    codes, scales = tok.encode(x, bandwidth=2.0, return_scales=True)
    assert torch.equal(codes, ref_codes)
    wav = tok.decode(codes, scales=scales)
    n = min(wav.shape[-1], ref_wav.shape[-1])
    assert torch.allclose(wav[..., :n], ref_wav[..., :n], atol=1e-5)


@pytest.mark.parametrize("stereo48", [False, True])
def test_original_th_checkpoint_matches_transformers(tmp_path, stereo48):
    model = _tiny_hf(stereo48)
    state = hf_to_encodec_state_dict(model.state_dict())
    # the original package's names: SConv1d -> .conv.conv., SConvTranspose1d -> .convtr.convtr.
    assert "encoder.model.0.conv.conv.weight" in state or "encoder.model.0.conv.conv.weight_g" in state
    assert any(".convtr." in k for k in state) and "quantizer.vq.layers.0._codebook.embed" in state
    assert not any(k.startswith("encoder.layers.") for k in state)
    torch.save(state, tmp_path / "encodec.th")
    c = model.config
    tok = AudioTokenizer.from_encodec_checkpoint(tmp_path / "encodec.th", sample_rate=800, causal=c.use_causal_conv,
                                                 normalize=c.normalize, chunk_length_s=c.chunk_length_s,
                                                 overlap=c.overlap)
    assert tok.config.upsampling_ratios == [4, 2] and tok.config.channels == c.audio_channels
    x = torch.randn(1, c.audio_channels, 1700) * 0.2
    ref_codes, ref_wav = _hf_reference(model, x, 2.0)
    codes, scales = tok.encode(x, bandwidth=2.0, return_scales=True)
    assert torch.equal(codes, ref_codes)
    wav = tok.decode(codes, scales=scales if c.normalize else None)
    n = min(wav.shape[-1], ref_wav.shape[-1])
    assert torch.allclose(wav[..., :n], ref_wav[..., :n], atol=1e-5)


# where the encodec package's names land in ours, by kind of layer (checked for both models)
_ENCODEC_PLACES = {
    "weight_norm": {
        "encoder.model.0.conv.conv.weight_v": "encoder.layers.0.conv.parametrizations.weight.original1",
        "encoder.model.0.conv.conv.weight_g": "encoder.layers.0.conv.parametrizations.weight.original0",
        "encoder.model.1.block.1.conv.conv.weight_v": "encoder.layers.1.block.1.conv.parametrizations.weight.original1",
        "encoder.model.1.shortcut.conv.conv.weight_g": "encoder.layers.1.shortcut.conv.parametrizations.weight.original0",
        "decoder.model.3.convtr.convtr.weight_v": "decoder.layers.3.conv.parametrizations.weight.original1",
        "decoder.model.15.conv.conv.bias": "decoder.layers.15.conv.bias",
    },
    "time_group_norm": {
        "encoder.model.0.conv.conv.weight": "encoder.layers.0.conv.weight",
        "encoder.model.0.conv.norm.weight": "encoder.layers.0.norm.weight",
        "encoder.model.1.shortcut.conv.norm.bias": "encoder.layers.1.shortcut.norm.bias",
        "decoder.model.3.convtr.convtr.weight": "decoder.layers.3.conv.weight",
        "decoder.model.3.convtr.norm.weight": "decoder.layers.3.norm.weight",
    },
    "any": {
        "encoder.model.13.lstm.weight_ih_l1": "encoder.layers.13.lstm.weight_ih_l1",
        "decoder.model.1.lstm.bias_hh_l0": "decoder.layers.1.lstm.bias_hh_l0",
        "quantizer.vq.layers.0._codebook.embed": "quantizer.layers.0._codebook.embed",
        "quantizer.vq.layers.0._codebook.embed_avg": "quantizer.layers.0._codebook.embed_avg",
    },
}


@pytest.mark.parametrize("name", ["encodec_24khz", "encodec_48khz"])
def test_encodec_th_in_the_real_package_layout(tmp_path, name):
    """A `.th` file with the keys, shapes and container of Meta's encodec package (recorded from
    `EncodecModel.encodec_model_24khz/48khz` by scripts/record_layouts.py; the published files are
    plain `torch.save(model.state_dict())`), every tensor distinct: the architecture is inferred,
    and every tensor lands where it belongs."""
    layout = read_layout(f"{name}.json")
    p = layout["params"]
    state = random_state(layout, seed=5)
    path = tmp_path / p["checkpoint"]
    torch.save(state, path)
    tok = AudioTokenizer.from_encodec_checkpoint(path)
    c = tok.config
    levels = len({k.split(".")[3] for k in state if k.startswith("quantizer.vq.layers.")})
    assert levels == {24000: 32, 48000: 16}[p["sample_rate"]]  # 24 kbps at 75 / 150 Hz frames, 10 bits
    assert (c.sample_rate, c.channels, c.causal, c.norm_type, c.normalize) == (
        p["sample_rate"], p["channels"], p["causal"], p["norm"], p.get("normalize", False))
    assert (c.levels, c.codebook_size, c.hidden_size, c.upsampling_ratios, c.num_lstm_layers) == (
        levels, 1024, 128, [8, 5, 4, 2], 2)
    ours = tok.state_dict()
    places = {**_ENCODEC_PLACES[p["norm"]], **_ENCODEC_PLACES["any"]}
    places[f"quantizer.vq.layers.{levels - 1}._codebook.embed"] = f"quantizer.layers.{levels - 1}._codebook.embed"
    for theirs, mine in places.items():
        assert torch.equal(ours[mine].reshape(state[theirs].shape), state[theirs]), (theirs, mine)
    # every tensor of the file (all but the 1-element `inited` flags) is somewhere in ours
    where = landed(state, ours)
    lost = [k for k, v in state.items() if v.numel() > 1 and k not in where]
    assert not lost, f"{len(lost)} tensors of the checkpoint are nowhere in the model: {lost[:4]}"
    assert all(bool(ours[f"quantizer.layers.{i}._codebook.initted"]) for i in range(levels))
    x = torch.randn(1, c.channels, 1000) * 0.1
    codes = tok.encode(x)
    assert codes.shape[1] == levels and tok.decode(codes, length=1000).shape == x.shape


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        AudioTokenizer.from_encodec_checkpoint(tmp_path / "nope.th")
    (tmp_path / "junk.th").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        AudioTokenizer.from_encodec_checkpoint(tmp_path / "junk.th")
    with pytest.raises(CheckpointError, match="config.json"):
        AudioTokenizer.from_hf(tmp_path)


# --- resampling / format conversion --------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [(44100, 16000), (16000, 48000), (22050, 16000), (48000, 24000)])
def test_resample_sine(src, dst):
    f = 440.0
    x = torch.sin(2 * math.pi * f * torch.arange(src) / src)
    y = resample(x, src, dst)
    assert y.shape[-1] == dst
    ref = torch.sin(2 * math.pi * f * torch.arange(dst) / dst)
    edge = dst // 50
    assert (y - ref)[edge:-edge].abs().max() < 3e-3


def test_resample_removes_alias():
    x = torch.sin(2 * math.pi * 10000 * torch.arange(44100) / 44100)  # above the 8 kHz Nyquist
    assert resample(x, 44100, 16000)[500:-500].abs().max() < 5e-3


def test_to_model_format_converts_channels_and_rate():
    stereo = torch.stack([torch.ones(4410) * 0.5, torch.zeros(4410)])
    mono = to_model_format(stereo, 44100, 16000, channels=1)
    assert mono.shape == (1, 1600)
    assert torch.allclose(mono[:, 200:-200], torch.full((1, 1200), 0.25), atol=1e-3)
    assert to_model_format(torch.zeros(1, 800), 8000, 16000, channels=2).shape == (2, 1600)


def test_latent_companding_inverts_and_keeps_gradients():
    torch.manual_seed(0)
    plain = AudioTokenizer(AudioTokenizerConfig.tiny(quantize_dropout=False)).eval()
    comp = AudioTokenizer(AudioTokenizerConfig.tiny(quantize_dropout=False, latent_compand=0.25)).eval()
    comp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 2048) * torch.tensor([1e-3, 1.0])[:, None, None]  # a quiet and a loud clip
    z, zc = plain.latents(x), comp.latents(x)
    # same direction, norms compressed (log-like above s), and the decoder-side inverse restores z
    assert torch.allclose(F.normalize(z, dim=1), F.normalize(zc, dim=1), atol=1e-5)
    assert zc.norm(dim=1).max() < z.norm(dim=1).max()
    assert torch.allclose(comp._uncompand(zc), z, rtol=1e-4, atol=1e-5)
    assert plain._uncompand(z) is z
    with pytest.raises(ValueError, match="latent_compand must be positive"):
        AudioTokenizerConfig.tiny(latent_compand=-0.5)
    y = comp.decode(comp.encode(x), length=2048)
    assert y.shape == x.shape and torch.isfinite(y).all()
    comp.train()
    y, _, commit = comp(x)
    ((y - x).abs().mean() + commit).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in comp.encoder.parameters())


def test_decode_latents_with_grad_matches_decode_and_restores_scale():
    """The trainer's decoder-only phase decodes through decode_latents(dequantize(codes)): same output as decode
    (RMS scales of normalising models applied), with gradients for the decoder."""
    torch.manual_seed(0)
    tok = AudioTokenizer(AudioTokenizerConfig.tiny(normalize=True, quantize_dropout=False)).eval()
    x = torch.randn(2, 1, 1024) * torch.tensor([0.01, 1.0])[:, None, None]
    codes, scales = tok.encode(x, return_scales=True)
    y = tok.decode_latents(tok.dequantize(codes), 1024, scales)
    assert torch.allclose(y.detach(), tok.decode(codes, 1024, scales))
    assert y[1].detach().std() > 10 * y[0].detach().std()  # each clip back at its own level
    y.pow(2).mean().backward()
    assert all(p.grad is not None for p in tok.decoder.parameters())
