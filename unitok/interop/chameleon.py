"""Chameleon (transformers' `ChameleonForConditionalGeneration`): the image side of an import.

The language model maps as the Llama family's (`llama.py`, QK-norm "layernorm"). What is Chameleon's
own (transformers 5.25, `models/chameleon`):

- the image ids. `vocabulary_map` names the token of image code c "IMGIMG" + the digits of c written
  as letters A-J + "Z" (`ChameleonImageVocabularyMapping`). Those tokens must be one run of ids in
  code order (the released models: ids 4-8195): the vocabulary's image codebook, in place among
  the text ids (`UnifiedVocab(code_ids=...)`). An image span is <racm3:break>, the grid's codes row
  by row, <eoss> (the processor's image start and end tokens; no size tokens): a `SpanFormat` of
  fixed sizes, the VQ's grid (resolution / downsampling: 512 / 16 = 32 x 32 for the released models).
- the VQ model, `model.vqmodel.*`: taming's encoder, quant_conv and codebook
  (quantize.embedding.weight), and a post_quant_conv for a decoder it does not have. It becomes an
  `ImageEncoderTokenizer` (encode only); with a taming VQGAN checkpoint (`--image-decoder`, the one
  Meta's release ships as tokenizer/vqgan.ckpt) the full `ImageTokenizer`, whose encoder and codebook
  must then equal the folder's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unitok.errors import CheckpointError
from unitok.vocab import UNITOK_SPANS, SpanFormat

__all__ = ["image_side"]

BEGIN, END = "<racm3:break>", "<eoss>"  # ChameleonProcessor's image_start_token and image_end_token
_LETTERS = {chr(ord("A") + i): str(i) for i in range(10)}


def image_side(hf: dict, vq_state: dict[str, torch.Tensor], src: Path, decoder=None):
    """(image tokenizer, vocabulary layout {"specials", "code_ids", "spans"}) of a Chameleon folder."""
    from unitok.config import from_dict
    from unitok.tokenizers.image import ImageEncoderTokenizer, ImageTokenizerConfig

    def refuse(why):
        return CheckpointError(f"{src}: cannot import this chameleon model: {why}")

    vq = hf.get("vq_config") or {}
    if vq.get("double_latent"):
        raise refuse("vq_config double_latent (a KL autoencoder's latent, not a VQ encoder)")
    vanilla = vq.get("attn_type", "vanilla") == "vanilla"  # otherwise no attention blocks at all
    try:
        cfg = from_dict(ImageTokenizerConfig, dict(
            ch=vq.get("base_channels", 128), ch_mult=list(vq.get("channel_multiplier", [1, 1, 2, 2, 4])),
            num_res_blocks=vq.get("num_res_blocks", 2), attn_resolutions=list(vq.get("attn_resolutions") or [])
            if vanilla else [], mid_attn=vanilla, resolution=vq.get("resolution", 512),
            z_channels=vq.get("latent_channels", 256), embed_dim=vq.get("embed_dim", 256),
            in_channels=vq.get("in_channels", 3),
            quantizer=dict(codebook_size=vq.get("num_embeddings", 8192), ema=False, kmeans_init=False)),
            source=f"{src}/config.json vq_config")
    except (TypeError, ValueError) as e:
        raise refuse(f"vq_config: {e}") from None
    # post_quant_conv feeds a decoder the folder does not have
    state = {k: v for k, v in vq_state.items() if not k.startswith("post_quant_conv.")}
    tok = ImageEncoderTokenizer(cfg)
    tok.load_taming_state_dict(state, source=f"{src} (model.vqmodel.*)")
    tok.eval()
    if decoder is not None:
        tok = _with_decoder(tok, decoder, cfg, src)
    return tok, _layout(hf, cfg, refuse)


def _with_decoder(enc, decoder, cfg, src: Path):
    """The full tokenizer of a taming checkpoint, refused unless it encodes as the folder's VQ does."""
    from unitok.tokenizers.image import ImageTokenizer

    full = ImageTokenizer.from_taming(decoder, cfg)
    mine, theirs = enc.state_dict(), full.state_dict()
    differ = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    if differ:
        raise CheckpointError(f"{decoder}: its encoder differs from {src}'s VQ encoder ({differ[0]}); "
                              "not this model's image tokenizer")
    return full


def _layout(hf: dict, cfg, refuse) -> dict:
    vmap = hf.get("vocabulary_map")
    if not isinstance(vmap, dict):
        raise refuse("config.json has no vocabulary_map (the ids of the image tokens)")
    codes = {}
    for name, i in vmap.items():
        if name.startswith("IMGIMG") and name.endswith("Z"):
            digits = "".join(_LETTERS.get(c, "?") for c in name[len("IMGIMG"):-1])
            if not digits.isdigit():
                raise refuse(f"vocabulary_map image token {name!r} does not name a code")
            codes[int(digits)] = i
    size = cfg.quantizer.codebook_size
    if sorted(codes) != list(range(size)):
        raise refuse(f"vocabulary_map names {len(codes)} image codes; the VQ codebook has {size}")
    start = codes[0]
    if any(codes[c] != start + c for c in codes):
        raise refuse("the image tokens of vocabulary_map are not one run of ids in code order")
    if BEGIN not in vmap or END not in vmap:
        raise refuse(f"vocabulary_map has no {BEGIN} or {END} (the image's begin and end tokens)")
    side = cfg.resolution // cfg.downsample
    ours = UNITOK_SPANS["image"]  # our marker names, at Chameleon's ids
    return {"specials": {ours.begin: vmap[BEGIN], ours.end: vmap[END]}, "code_ids": {"image": start},
            "spans": {"image": SpanFormat(ours.begin, ours.end, grid=ours.grid, sizes=(side, side))}}
