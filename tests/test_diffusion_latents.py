"""The latent interface of every media tokenizer (issue 24, part 1): latents -> quantize_latents is
encode, dequantize -> decode_latents is decode, and a continuous latent renders through the same
decoder. Tiny random-weight tokenizers; the codebooks are given seeded codes by one eval encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from unitok.tokenizers.emu3 import Emu3ImageTokenizer, Emu3VQConfig
from unitok.tokenizers.image import ImageEncoderTokenizer, ImageTokenizer, image_preset, with_quantizer
from unitok.tokenizers.video import VideoTokenizer, video_preset


def _image(**q):
    cfg = image_preset("debug")
    return ImageTokenizer(with_quantizer(cfg, **q) if q else cfg)


# name -> (tokenizer factory, input, latent shape, code shape)
CASES = {
    "image-vq-lowdim": (lambda: _image(), (2, 3, 16, 16), (2, 16, 4, 4), (2, 4, 4)),
    "image-rvq": (lambda: _image(kind="rvq", levels=2), (2, 3, 16, 16), (2, 16, 4, 4), (2, 2, 4, 4)),
    "image-cosine": (lambda: _image(cosine=True), (1, 3, 8, 12), (1, 16, 2, 3), (1, 2, 3)),
    "emu3": (lambda: Emu3ImageTokenizer(Emu3VQConfig(codebook_size=64, ch=32, ch_mult=[1, 2], num_res_blocks=1,
                                                     attn_levels=[1], temporal_factor=2)),
             (2, 3, 8, 8), (2, 4, 4, 4), (2, 4, 4)),
    "video-vq3d": (lambda: VideoTokenizer(video_preset("debug")), (1, 3, 5, 8, 8), (1, 16, 2, 2, 2), (1, 2, 2, 2)),
    "video-per-frame": (lambda: VideoTokenizer(video_preset("per-frame-debug")), (2, 3, 3, 8, 8), (2, 16, 3, 2, 2),
                        (2, 3, 2, 2)),
    "video-per-frame-rvq": (lambda: VideoTokenizer(video_preset("per-frame-debug").__class__(
        mode="per-frame", image=with_quantizer(image_preset("debug"), kind="rvq", levels=3))),
        (1, 3, 2, 8, 8), (1, 16, 2, 2, 2), (1, 3, 2, 2, 2)),
    "audio": (lambda: AudioTokenizer(AudioTokenizerConfig.tiny(quantize_dropout=False, latent_compand=0.5)),
              (2, 1, 1024), None, None),
}


def _build(name):
    torch.manual_seed(0)
    make, shape, zshape, cshape = CASES[name]
    tok = make().eval()
    x = torch.rand(shape) * 2 - 1
    return tok, x, zshape, cshape


@pytest.mark.parametrize("name", sorted(CASES))
@torch.no_grad()  # decode_latents keeps gradients; the audio LSTM's autograd kernel differs in the last bits
def test_latent_interface_composes_to_encode_and_decode(name):
    tok, x, zshape, cshape = _build(name)
    codes = tok.encode(x)
    z = tok.latents(x)
    if zshape is not None:
        assert tuple(z.shape) == zshape and tuple(codes.shape) == cshape
    assert torch.equal(tok.quantize_latents(z), codes)
    zq = tok.dequantize(codes)
    assert zq.shape == z.shape  # the decoder's input has the latent's shape
    assert torch.equal(tok.decode_latents(zq), tok.decode(codes))
    # a continuous latent renders through the same decoder: same shape, another picture
    y_cont, y_codes = tok.decode_latents(z), tok.decode(codes)
    assert y_cont.shape == y_codes.shape and not torch.equal(y_cont, y_codes)


@torch.no_grad()
def test_audio_latents_are_per_frame_shared_by_levels():
    tok, x, _, _ = _build("audio")
    z = tok.latents(x)
    codes = tok.encode(x, levels=3)
    assert z.shape == (2, tok.config.hidden_size, codes.shape[-1]) and codes.shape[:2] == (2, 3)
    assert torch.equal(tok.quantize_latents(z, 3), codes)
    assert torch.equal(tok.decode_latents(tok.dequantize(codes), 1024), tok.decode(codes, 1024))
    with pytest.raises(ValueError, match="levels must be in 1..4, got 5"):
        tok.quantize_latents(z, 5)


@torch.no_grad()
def test_audio_scales_are_not_in_the_latent():
    """A normalising, chunked model: a clip and the same clip 10x louder give the same latent (the
    RMS scales carry the level); decode_latents with the scales gives decode's output at the clip's level."""
    torch.manual_seed(0)
    tok = AudioTokenizer(AudioTokenizerConfig.tiny(quantize_dropout=False, normalize=True, chunk_length_s=0.05,
                                                   overlap=0.0)).eval()
    x = torch.randn(1, 1, 2000) * 0.05
    z, s = tok.latents(x, return_scales=True)
    z10, s10 = tok.latents(10 * x, return_scales=True)
    assert s.shape == (1, 3) and torch.allclose(s10, 10 * s)
    assert torch.allclose(z, z10, atol=1e-4)
    codes, scales = tok.encode(x, return_scales=True)
    assert torch.equal(scales, s) and torch.equal(tok.quantize_latents(z), codes)
    y = tok.decode_latents(tok.dequantize(codes), 2000, scales)
    assert torch.equal(y, tok.decode(codes, 2000, scales))
    assert torch.allclose(tok.decode_latents(tok.dequantize(codes), 2000, 10 * scales), 10 * y, atol=1e-5)


def test_encoder_only_tokenizer_has_latents_but_no_decoder():
    from unitok.errors import ConfigError

    torch.manual_seed(0)
    tok = ImageEncoderTokenizer(image_preset("debug")).eval()
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    z = tok.latents(x)
    assert torch.equal(tok.quantize_latents(z), tok.encode(x))
    with pytest.raises(ConfigError, match="no decoder"):
        tok.decode_latents(z)


def test_continuous_vs_quantized_psnr(tmp_path):
    """The bench function measures both paths on a folder of images, per image and on average."""
    from PIL import Image

    from unitok.bench.latents import continuous_vs_quantized

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    torch.manual_seed(0)
    tok = ImageTokenizer(image_preset("debug")).eval()
    r = continuous_vs_quantized(tok, tmp_path, size=16)
    assert r["images"] == 2 and set(r) >= {"psnr_codes_db", "psnr_latents_db", "per_image"}
    # the figures are the mean of the per-image figures, each a PSNR against the prepared input
    assert r["psnr_codes_db"] == pytest.approx(np.mean([p["psnr_codes_db"] for p in r["per_image"]]))
    assert all(np.isfinite(p["psnr_latents_db"]) for p in r["per_image"])
    assert r["psnr_codes_db"] != r["psnr_latents_db"]
